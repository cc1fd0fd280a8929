"""G.711 PCMU (mu-law) and PCMA (A-law) <-> 16-bit linear PCM, the ITU-T tables.

Written out here because ``audioop`` is deprecated (removed in Python 3.13). Decoding
uses 256-entry tables built once; encoding (for tests and prompt files) is per sample.
"""

from __future__ import annotations

from array import array

_ULAW_BIAS = 0x21  # of the 14-bit encoder
_ULAW_CLIP = 8159
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _ulaw_to_linear(code: int) -> int:
    code = ~code & 0xFF
    exponent = (code >> 4) & 0x07
    sample = ((((code & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return -sample if code & 0x80 else sample


def _alaw_to_linear(code: int) -> int:
    code ^= 0x55
    sample = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        sample += 8
    else:
        sample = (sample + 0x108) << (segment - 1)
    return sample if code & 0x80 else -sample


ULAW_DECODE: tuple[int, ...] = tuple(_ulaw_to_linear(c) for c in range(256))
"""Linear value of every mu-law byte (-32124 .. 32124)."""
ALAW_DECODE: tuple[int, ...] = tuple(_alaw_to_linear(c) for c in range(256))
"""Linear value of every A-law byte (-32256 .. 32256)."""


def ulaw_encode(sample: int) -> int:
    """The mu-law byte for a 16-bit sample."""
    pcm = sample >> 2  # mu-law works on 14 bits, as in ITU-T G.191
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, _ULAW_CLIP) + _ULAW_BIAS
    segment = max(pcm.bit_length() - 6, 0)  # 0x3F, 0x7F, ... 0x1FFF end the segments
    if segment > 7:
        return 0x7F ^ mask
    return ((segment << 4) | ((pcm >> (segment + 1)) & 0x0F)) ^ mask


def alaw_encode(sample: int) -> int:
    """The A-law byte for a 16-bit sample."""
    pcm = sample >> 3  # A-law works on 13 bits
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    for segment, end in enumerate(_ALAW_SEGMENT_ENDS):
        if pcm <= end:
            shift = 1 if segment < 2 else segment
            return ((segment << 4) | ((pcm >> shift) & 0x0F)) ^ mask
    return 0x7F ^ mask


def decode(payload: bytes, table: tuple[int, ...]) -> array[int]:
    """Samples of a G.711 payload (``table`` is :data:`ULAW_DECODE` or :data:`ALAW_DECODE`)."""
    return array("h", map(table.__getitem__, payload))


def encode(samples: list[int] | array[int], law: str) -> bytes:
    """Encode 16-bit samples with ``law`` ``"ulaw"`` or ``"alaw"``."""
    encoder = ulaw_encode if law == "ulaw" else alaw_encode
    return bytes(encoder(s) for s in samples)
