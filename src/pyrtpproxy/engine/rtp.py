"""Minimal RTP header reading and per-stream sequence/jitter analysis (RFC 3550 A.1, A.8)."""

from __future__ import annotations

import struct

_HEADER = struct.Struct("!BBHII")
RTP_HEADER_SIZE = _HEADER.size
MAX_DROPOUT = 3000
MAX_MISORDER = 100
SEQ_MOD = 1 << 16


def rtp_header(packet: bytes) -> tuple[int, int, int, int] | None:
    """Return ``(payload_type, seq, timestamp, ssrc)`` of an RTP v2 packet, else None."""
    if len(packet) < RTP_HEADER_SIZE:
        return None
    first, second, seq, timestamp, ssrc = _HEADER.unpack_from(packet)
    if first >> 6 != 2:
        return None
    return second & 0x7F, seq, timestamp, ssrc


class RtpAnalysis:
    """Sequence tracking for one received RTP stream: sent/received/lost/dups/errors,
    inter-packet gaps and interarrival jitter. Fed with ``(packet, arrival time)``."""

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_cycles",
        "_expected_before",
        "_jitter_samples",
        "_jitter_sum",
        "_last_arrival",
        "_last_transit",
        "_max_seq",
        "_seen",
        "dups",
        "jitter_last",
        "jitter_max",
        "longest_ipi",
        "parse_errors",
        "received",
        "ssrc",
        "ssrc_changes",
    )

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.ssrc_changes = 0
        self.received = 0
        self.dups = 0
        self.parse_errors = 0
        self.longest_ipi = 0.0
        self.jitter_last = 0.0
        self.jitter_max = 0.0
        self._jitter_sum = 0.0
        self._jitter_samples = 0
        self._bad_seq: int | None = None
        self._base_seq = 0
        self._max_seq = 0
        self._cycles = 0
        self._expected_before = 0
        self._seen: set[int] = set()
        self._last_arrival: float | None = None
        self._last_transit: float | None = None

    def feed(self, packet: bytes, arrival: float, clock_rate: int = 8000) -> None:
        """Account one packet received at ``arrival`` (seconds)."""
        header = rtp_header(packet)
        if header is None:
            self.parse_errors += 1
            return
        _pt, seq, timestamp, ssrc = header
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self.ssrc_changes += 1
            self._restart(ssrc, seq)
        elif not self._update_seq(seq):
            return
        self.received += 1
        if self._last_arrival is not None:
            self.longest_ipi = max(self.longest_ipi, arrival - self._last_arrival)
        self._last_arrival = arrival
        transit = arrival - timestamp / clock_rate
        if self._last_transit is not None:
            delta = abs(transit - self._last_transit)
            self.jitter_last += (delta - self.jitter_last) / 16.0
            self.jitter_max = max(self.jitter_max, self.jitter_last)
            self._jitter_sum += self.jitter_last
            self._jitter_samples += 1
        self._last_transit = transit

    def _restart(self, ssrc: int, seq: int) -> None:
        self._expected_before = self.expected
        self.ssrc = ssrc
        self._base_seq = seq
        self._max_seq = seq
        self._cycles = 0
        self._seen = {seq}
        self._last_transit = None

    def _update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1, simplified: True when the packet counts as received."""
        delta = (seq - self._max_seq) % SEQ_MOD
        extended = self._cycles + seq
        if delta >= SEQ_MOD - MAX_MISORDER and seq > self._max_seq:
            extended -= SEQ_MOD  # a late packet from before the last wrap
        if delta == 0 or (delta >= SEQ_MOD - MAX_MISORDER and extended in self._seen):
            self.dups += 1
            return False
        if delta < MAX_DROPOUT:
            if seq < self._max_seq:
                self._cycles += SEQ_MOD
                extended = self._cycles + seq
            self._max_seq = seq
        elif delta < SEQ_MOD - MAX_MISORDER:
            # a big jump: a restart of the sequence (the source was reset) only when the
            # next packet follows on; a single stray or very late packet is not counted
            if seq != self._bad_seq:
                self._bad_seq = (seq + 1) % SEQ_MOD
                return False
            self._bad_seq = None
            self._expected_before = self.expected
            self._base_seq = seq
            self._max_seq = seq
            self._cycles = 0
            self._seen.clear()
            extended = seq
        else:
            extended = (self._cycles - SEQ_MOD if seq > self._max_seq else self._cycles) + seq
        self._seen.add(extended)
        if len(self._seen) > 2 * MAX_MISORDER:
            floor = self._cycles + self._max_seq - MAX_MISORDER
            self._seen = {s for s in self._seen if s >= floor}
        return True

    @property
    def expected(self) -> int:
        """Packets the sender sent, judged by sequence numbers (``rtpa_nsent``)."""
        if self.ssrc is None:
            return 0
        return self._expected_before + self._cycles + self._max_seq - self._base_seq + 1

    @property
    def lost(self) -> int:
        """Packets never received (``rtpa_nlost``); never negative."""
        return max(0, self.expected - self.received)

    @property
    def jitter_avg(self) -> float:
        """Mean of the running jitter estimates, seconds."""
        return self._jitter_sum / self._jitter_samples if self._jitter_samples else 0.0
