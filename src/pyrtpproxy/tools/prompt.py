"""``pyrtpproxy prompt``: a PCM WAV file -> prompt files for ``P`` (PCMU ``.0``, PCMA ``.8``).

The relay plays ``<prompt>.<payload type>`` as raw codec payload (media-features.md
§3.2). This tool reads a mono or stereo (downmixed), 8- or 16-bit PCM WAV file at any
sample rate, resamples it to 8 kHz and writes ``NAME.0`` (mu-law) and ``NAME.8``
(A-law) next to each other, so ``P … NAME 0,8 …`` finds them.

Resampling is a windowed-sinc interpolator in pure Python (``audioop`` is deprecated):
each output sample is a Blackman-windowed sinc of the input around its position, with
the cut-off below both Nyquist frequencies, so downsampling low-passes first and
nothing above 4 kHz folds back into the prompt.
"""

from __future__ import annotations

import math
import operator
import sys
import wave
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from .g711 import encode

RATE = 8000  # G.711's sampling rate
PROMPT_TYPES = ((0, "ulaw"), (8, "alaw"))  # payload type -> G.711 law, in the order written
ZERO_CROSSINGS = 16  # of the sinc on each side: the filter's length and sharpness
PASSBAND = 0.95  # of the lower Nyquist frequency: room for the filter's transition band
PHASES = 256  # fractional positions the interpolator tells apart (1/256 input sample)


class PromptError(Exception):
    """An input that cannot become a prompt; the message says why."""


@dataclass(frozen=True, slots=True)
class Audio:
    """Mono 16-bit samples at ``rate`` Hz."""

    samples: array[int]
    rate: int
    downmixed_from: int = 1  # channels in the input


def read_wav(path: str | Path) -> Audio:
    """The samples of a PCM WAV file, downmixed to mono. Raises :class:`PromptError`."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise PromptError(f"{path}: not a PCM WAV file ({exc or 'truncated'})") from None
    if rate <= 0 or not frames:
        raise PromptError(f"{path}: no audio in it")
    if width not in (1, 2):
        raise PromptError(f"{path}: {8 * width}-bit samples; only 8- and 16-bit PCM is read")
    if width == 1:  # 8-bit WAV is unsigned
        pcm = array("h", ((byte - 128) << 8 for byte in frames))
    else:
        pcm = array("h")
        pcm.frombytes(frames[: len(frames) // 2 * 2])
        if sys.byteorder == "big":  # WAV is little-endian
            pcm.byteswap()
    if channels > 1:
        pcm = array(
            "h", (sum(pcm[i : i + channels]) // channels for i in range(0, len(pcm), channels))
        )
    return Audio(pcm, rate, channels)


def _blackman(u: float) -> float:
    return 0.42 + 0.5 * math.cos(math.pi * u) + 0.08 * math.cos(2 * math.pi * u)


def _kernels(cutoff: float, half_width: int) -> list[list[float]]:
    """One filter per fractional position ``p / PHASES``: the taps for the input samples
    at offsets ``-half_width + 1 .. half_width`` from the one before the position, each
    normalised to unity gain at DC."""
    kernels = []
    span = ZERO_CROSSINGS / (2 * cutoff)
    for phase in range(PHASES):
        frac = phase / PHASES
        taps = []
        for k in range(-half_width + 1, half_width + 1):
            x = k - frac
            if abs(x) >= span:
                taps.append(0.0)
                continue
            arg = 2 * cutoff * x
            sinc = 1.0 if arg == 0 else math.sin(math.pi * arg) / (math.pi * arg)
            taps.append(sinc * _blackman(x / span))
        total = sum(taps)
        kernels.append([t / total for t in taps])
    return kernels


def resample(samples: Sequence[int], rate: int, target: int = RATE) -> array[int]:
    """``samples`` at ``rate`` Hz as 16-bit samples at ``target`` Hz."""
    if rate == target:
        return array("h", samples)
    cutoff = 0.5 * PASSBAND * min(1.0, target / rate)  # cycles per input sample
    half_width = math.ceil(ZERO_CROSSINGS / (2 * cutoff))
    kernels = _kernels(cutoff, half_width)
    padded = [0] * half_width + list(samples) + [0] * (half_width + 1)
    count = len(samples) * target // rate
    out = array("h", bytes(2 * count))
    mul = operator.mul
    for n in range(count):
        whole, rest = divmod(n * rate, target)  # position n * rate / target in the input
        phase = round(rest * PHASES / target)
        if phase == PHASES:
            whole, phase = whole + 1, 0
        start = whole + 1  # padded index of the tap at offset -half_width + 1
        window = padded[start : start + 2 * half_width]
        value = round(sum(map(mul, window, kernels[phase])))
        out[n] = max(-32768, min(32767, value))
    return out


def write_prompt(audio: Audio, name: str | Path) -> list[Path]:
    """Write ``name.0`` and ``name.8`` from ``audio``; the paths written."""
    samples = resample(audio.samples, audio.rate)
    written = []
    for payload_type, law in PROMPT_TYPES:
        path = Path(f"{name}.{payload_type}")
        path.write_bytes(encode(samples, law))
        written.append(path)
    return written


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Example:
  pyrtpproxy prompt welcome.wav -o /var/lib/prompts/welcome
  (then: P c1 /var/lib/prompts/welcome 0,8 ftag ttag)
See pyrtpproxy(8).""",
)
@click.argument("wav", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="NAME",
    help="The prompt name: NAME.0 (PCMU) and NAME.8 (PCMA) are written.",
)
def prompt_command(wav: str, output: str) -> None:
    """Turn WAV (PCM, 8- or 16-bit, any rate; stereo is downmixed) into prompt files."""
    try:
        audio = read_wav(wav)
        written = write_prompt(audio, output)
    except (PromptError, OSError) as exc:
        click.echo(f"pyrtpproxy prompt: {exc}", err=True)
        sys.exit(1)
    if audio.downmixed_from > 1:
        click.echo(f"pyrtpproxy prompt: {audio.downmixed_from} channels mixed into one", err=True)
    seconds = len(audio.samples) / audio.rate if audio.rate else 0.0
    click.echo(f"{seconds:.2f} s: " + ", ".join(str(p) for p in written))


def main(argv: list[str]) -> None:
    """``pyrtpproxy prompt ...`` (dispatched from :func:`pyrtpproxy.cli.main`)."""
    prompt_command.main(args=argv, prog_name="pyrtpproxy prompt")
