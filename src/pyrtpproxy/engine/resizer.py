"""Re-packetization (``z<ms>`` in U/L): RTP of one party re-cut to a fixed packet time.

Pure: the caller feeds each packet with its arrival time and sends what comes back, in
that order (media-features.md §4). There is no timer: output happens only when a packet
arrives, as in rtpproxy. Packets of the audio types below are queued in timestamp order
and re-cut at frame boundaries; everything else (dynamic types, telephone events,
comfort noise, empty or unparseable packets) goes straight through, unchanged.

Unlike rtpproxy, G.722 is split one byte per timestamp unit (its 8 kHz RTP clock), so
the timestamps of the output match the audio (docs/compatibility.md).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

RATE = 8000  # every type handled here has an 8 kHz RTP clock
TS_MOD = 1 << 32
SEQ_MOD = 1 << 16
SLACK = 40  # 5 ms: the queue's clock runs this far behind the first packet's timestamp
MIN_WAIT = 320  # 40 ms: the shortest time the oldest queued packet may wait
LAG_TOLERANCE = 160  # 20 ms of lag (beyond one target) before the clock is pulled back

_FIXED = struct.Struct("!BBHII")  # first byte, marker|PT, seq, timestamp, SSRC
_PADDING = 0x20
_EXTENSION = 0x10


def _before(a: int, b: int) -> bool:
    """Timestamp ``a`` is earlier than ``b`` (modulo 2**32, RFC 3550 wrap-around)."""
    return (a - b) % TS_MOD >= TS_MOD >> 1


# A split point: (bytes, samples) of a payload's head, or None when it is the whole payload.
Cut = tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class Codec:
    """How one payload type is measured and cut (media-features.md §4.2)."""

    granule: int  # samples: the smallest packet, and what packet sizes are multiples of
    measure: Callable[[bytes], tuple[int, bool] | None]  # (samples, appendable); None: pass
    cut: Callable[[bytes, int, int], Cut]  # (payload, its samples, samples wanted)

    def target(self, wanted: int) -> int:
        """``wanted`` samples raised to the granule, or rounded up to a multiple of it."""
        return max(self.granule, math.ceil(wanted / self.granule) * self.granule)


def _bytewise_measure(payload: bytes) -> tuple[int, bool]:
    return len(payload), True


def _bytewise_cut(payload: bytes, samples: int, wanted: int) -> Cut:
    return (wanted, wanted) if wanted < samples else None


def _frame_cut(frame_bytes: int, frame_samples: int) -> Callable[[bytes, int, int], Cut]:
    def cut(payload: bytes, samples: int, wanted: int) -> Cut:
        frames = math.ceil(wanted / frame_samples)
        if frames * frame_samples >= samples:
            return None
        return frames * frame_bytes, frames * frame_samples

    return cut


def _g729_measure(payload: bytes) -> tuple[int, bool]:
    # a trailing partial frame is a SID (comfort noise): it counts as one frame and
    # nothing may follow it in the same packet
    frames, rest = divmod(len(payload), 10)
    return (frames + (rest > 0)) * 80, rest == 0


def _gsm_measure(payload: bytes) -> tuple[int, bool] | None:
    frames, rest = divmod(len(payload), 33)
    return None if rest else (frames * 160, True)


_G723_FRAME_BYTES = (24, 20, 4, 0)  # by the 2 low bits of a frame's first byte; 0: invalid


def _g723_frames(payload: bytes) -> list[int] | None:
    """The byte offsets where G.723.1 frames end, if the payload is a whole number of them."""
    ends: list[int] = []
    pos = 0
    while pos < len(payload):
        size = _G723_FRAME_BYTES[payload[pos] & 3]
        if not size:
            return None
        pos += size
        ends.append(pos)
    return ends if pos == len(payload) else None


def _g723_measure(payload: bytes) -> tuple[int, bool] | None:
    ends = _g723_frames(payload)
    return None if ends is None else (len(ends) * 240, True)


def _g723_cut(payload: bytes, samples: int, wanted: int) -> Cut:
    frames = math.ceil(wanted / 240)
    if frames * 240 >= samples:
        return None
    ends = _g723_frames(payload)
    assert ends is not None  # measured when it was queued
    return ends[frames - 1], frames * 240


_BYTEWISE = Codec(80, _bytewise_measure, _bytewise_cut)
CODECS: dict[int, Codec] = {
    0: _BYTEWISE,  # PCMU
    8: _BYTEWISE,  # PCMA
    9: _BYTEWISE,  # G.722: 8 kHz RTP clock, one byte per timestamp unit
    18: Codec(80, _g729_measure, _frame_cut(10, 80)),  # G.729
    3: Codec(160, _gsm_measure, _frame_cut(33, 160)),  # GSM
    4: Codec(240, _g723_measure, _g723_cut),  # G.723.1
}


class _Piece:
    """Queued audio: a received packet, or what is left of it after a split."""

    __slots__ = (
        "appendable", "codec", "header", "marker", "payload", "pt", "samples", "seq", "ts",
    )  # fmt: skip

    def __init__(
        self,
        header: bytes,
        codec: Codec,
        pt: int,
        marker: bool,
        seq: int,
        ts: int,
        payload: bytes,
        samples: int,
        appendable: bool,
    ) -> None:
        self.header = header  # the packet's header, CSRCs and extension included
        self.codec = codec
        self.pt = pt
        self.marker = marker
        self.seq = seq
        self.ts = ts
        self.payload = payload
        self.samples = samples
        self.appendable = appendable

    def take_front(self, size: int, samples: int) -> _Piece:
        """Split off the first ``size`` bytes (``samples`` samples); this piece keeps the
        rest, starting later and without the marker."""
        front = _Piece(
            self.header, self.codec, self.pt, self.marker, self.seq, self.ts,
            self.payload[:size], samples, True,
        )  # fmt: skip
        self.payload = self.payload[size:]
        self.samples -= samples
        self.ts = (self.ts + samples) % TS_MOD
        self.marker = False
        return front


def _parse(packet: bytes) -> tuple[_Piece, int] | None:
    """The packet as queued audio and its SSRC, or None if it must pass unchanged."""
    if len(packet) < _FIXED.size:
        return None
    first, second, seq, ts, ssrc = _FIXED.unpack_from(packet)
    pt = second & 0x7F
    codec = CODECS.get(pt)
    if first >> 6 != 2 or codec is None:
        return None
    offset = _FIXED.size + 4 * (first & 0x0F)
    if first & _EXTENSION:
        if len(packet) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    end = len(packet)
    if first & _PADDING:
        end -= packet[-1]
        if packet[-1] == 0:
            return None
    if end <= offset:
        return None  # empty, or shorter than its own header
    payload = packet[offset:end]
    measured = codec.measure(payload)
    if measured is None:
        return None
    samples, appendable = measured
    # the header of every output built from this packet: no padding any more
    header = bytes([first & ~_PADDING & 0xFF]) + packet[1:offset]
    piece = _Piece(header, codec, pt, bool(second & 0x80), seq, ts, payload, samples, appendable)
    return piece, ssrc


class Resized(NamedTuple):
    """What one arriving packet caused."""

    packets: tuple[bytes, ...]  # to send now, in this order
    taken: bool  # it entered the re-packetizer (npkts_resizer_in)
    discarded: int  # packets thrown away now as late (npkts_resizer_discard)
    emitted: int  # how many of ``packets`` the re-packetizer built (npkts_resizer_out)


class Resizer:
    """Re-packetizes one party's RTP to ``target_ms`` milliseconds per packet."""

    __slots__ = (
        "_clock_offset",
        "_dropped",
        "_last_end",
        "_queue",
        "_queued_samples",
        "_seq",
        "_ssrc",
        "discarded_payload",
        "target_ms",
    )

    def __init__(self, target_ms: int) -> None:
        self.target_ms = target_ms
        self._queue: list[_Piece] = []  # in timestamp order
        self._queued_samples = 0
        self._ssrc: int | None = None
        self._last_end: int | None = None  # end of the last packet sent: earlier is late
        self._clock_offset: int | None = None  # RTP timestamp = arrival * RATE + offset
        self._seq: int | None = None  # the next output's sequence number
        self._dropped = 0  # pieces found late while building (counted by push)
        self.discarded_payload = 0  # payload bytes thrown away, over this resizer's life

    @property
    def queued(self) -> int:
        """Packets (or pieces of packets) waiting."""
        return len(self._queue)

    @property
    def queued_payload(self) -> int:
        """Payload bytes waiting."""
        return sum(len(piece.payload) for piece in self._queue)

    def push(self, packet: bytes, now: float) -> Resized:
        """Take one packet that arrived at ``now``; what to send now."""
        parsed = _parse(packet)
        passed: tuple[bytes, ...] = ()
        built: list[bytes] = []
        self._dropped = 0
        if parsed is None:
            passed = (packet,)
        else:
            piece, ssrc = parsed
            if ssrc != self._ssrc:
                # a new stream: what is queued of the old one goes out now, and the new
                # one's timestamps start their own timing
                while self._queue:
                    built.append(self._build())
                self._ssrc = ssrc
                self._last_end = self._clock_offset = None
            if self._last_end is not None and _before(piece.ts, self._last_end):
                self._dropped += 1
                self.discarded_payload += len(piece.payload)
            else:
                self._follow_clock(piece, now)
                self._enqueue(piece)
        while self._queue and self._due(now):
            built.append(self._build())
        return Resized((*passed, *built), parsed is not None, self._dropped, len(built))

    def retarget(self, target_ms: int) -> None:
        """A new ``z``: later packets are cut to ``target_ms`` (the queue is kept)."""
        self.target_ms = target_ms

    def discard(self) -> int:
        """Throw the queue away (``z`` removed, session ended); how many were queued."""
        freed = len(self._queue)
        self.discarded_payload += self.queued_payload
        self._queue.clear()
        self._queued_samples = 0
        return freed

    # --- internals -------------------------------------------------------------------

    @property
    def _wanted(self) -> int:
        """The ``z`` value in samples."""
        return self.target_ms * RATE // 1000

    def _target(self, codec: Codec) -> int:
        """Samples per output packet of ``codec``."""
        return codec.target(self._wanted)

    def _follow_clock(self, piece: _Piece, now: float) -> None:
        """Keep the mapping from arrival time to RTP time: jump forward to a packet
        that is ahead of it, drift back halfway when packets lag far behind it."""
        arrival = int(now * RATE)
        offset = self._clock_offset
        if offset is not None:
            clock = (arrival + offset) % TS_MOD
            if not _before(clock, piece.ts):
                lagging = (piece.ts + self._wanted + LAG_TOLERANCE) % TS_MOD
                if _before(lagging, clock):
                    self._clock_offset = offset - ((clock - lagging) % TS_MOD) // 2
                return
        self._clock_offset = piece.ts - arrival + SLACK

    def _enqueue(self, piece: _Piece) -> None:
        queue = self._queue
        index = len(queue)
        while index and _before(piece.ts, queue[index - 1].ts):
            index -= 1
        queue.insert(index, piece)
        self._queued_samples += piece.samples

    def _due(self, now: float) -> bool:
        """Enough is queued for a packet, or the oldest piece has waited long enough.
        Both use the ``z`` value itself, not the size rounded to the head's frames:
        that is how rtpproxy lets a slow sender's partial packets out."""
        head = self._queue[0]
        wanted = self._wanted
        if self._queued_samples >= wanted:
            return True
        assert self._clock_offset is not None  # set by the first packet queued
        clock = (int(now * RATE) + self._clock_offset) % TS_MOD
        return not _before(clock, (head.ts + max(2 * wanted, MIN_WAIT)) % TS_MOD)

    def _build(self) -> bytes:
        """One output packet from the head of the queue (media-features.md §4.3)."""
        queue = self._queue
        head = queue[0]
        codec = head.codec
        target = self._target(codec)
        if head.samples > target:
            cut = codec.cut(head.payload, head.samples, target)
            parts = [queue.pop(0) if cut is None else head.take_front(*cut)]
        else:
            parts = [queue.pop(0)]
            samples = head.samples
            while head.appendable and samples < target and queue:
                following = queue[0]
                if following.ts != (head.ts + samples) % TS_MOD or following.pt != head.pt:
                    break  # a gap, or another payload type
                wanted = target - samples
                cut = (
                    None
                    if wanted >= following.samples
                    else codec.cut(following.payload, following.samples, wanted)
                )
                parts.append(queue.pop(0) if cut is None else following.take_front(*cut))
                samples += parts[-1].samples
                if cut is not None or not following.appendable:
                    break
        return self._emit(parts)

    def _emit(self, parts: list[_Piece]) -> bytes:
        first = parts[0]
        samples = sum(part.samples for part in parts)
        self._queued_samples -= samples
        seq = first.seq if self._seq is None else self._seq
        self._seq = (seq + 1) % SEQ_MOD
        self._last_end = (first.ts + samples) % TS_MOD
        self._drop_overlapping()
        header = first.header
        second = (header[1] & 0x7F) | (0x80 if first.marker else 0)
        fixed = struct.pack("!BBHI", header[0], second, seq, first.ts)
        return b"".join((fixed, header[8:], *(part.payload for part in parts)))

    def _drop_overlapping(self) -> None:
        """Queued pieces that start before what was just sent are late now."""
        end = self._last_end
        assert end is not None
        kept = [piece for piece in self._queue if not _before(piece.ts, end)]
        if len(kept) != len(self._queue):
            for piece in self._queue:
                if _before(piece.ts, end):
                    self._queued_samples -= piece.samples
                    self.discarded_payload += len(piece.payload)
                    self._dropped += 1
            self._queue[:] = kept
