"""Minimal RTP header reading and per-stream sequence/jitter analysis (RFC 3550 A.1, A.8)."""

from __future__ import annotations

import struct

_HEADER = struct.Struct("!BBHII")
RTP_HEADER_SIZE = _HEADER.size
MAX_DROPOUT = 3000
MAX_MISORDER = 100
SEQ_MOD = 1 << 16
WINDOW_BITS = 128  # more than MAX_MISORDER: late duplicates are recognised
_WINDOW_MASK = (1 << WINDOW_BITS) - 1
_unpack_seq_ts_ssrc = struct.Struct("!HII").unpack_from


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
    inter-packet gaps and interarrival jitter. Fed with ``(packet, arrival time)``.

    Runs for every relayed RTP packet, so the in-order case is a handful of operations:
    duplicates are found with a bit window over the last ``WINDOW_BITS`` sequence numbers
    instead of a set, and an in-order packet only adds one to the run of them; the window
    (a many-digit int, dear to shift) and the received count take the run in when a
    packet is out of order.
    """

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_cycles",
        "_expected_before",
        "_in_order",
        "_jitter_sum",
        "_last_arrival",
        "_last_transit",
        "_next_seq",
        "_received",
        "_restarts",
        "_window",
        "dups",
        "jitter_last",
        "jitter_max",
        "longest_ipi",
        "parse_errors",
        "ssrc",
        "ssrc_changes",
    )

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.ssrc_changes = 0
        self._received = 0  # with _in_order: see received
        self._restarts = 0  # SSRCs taken up: each one's first packet has no jitter sample
        self.dups = 0
        self.parse_errors = 0
        self.longest_ipi = 0.0
        self.jitter_last = 0.0
        self.jitter_max = 0.0
        self._jitter_sum = 0.0
        self._bad_seq: int | None = None
        self._base_seq = 0
        self._next_seq = -1  # the highest sequence number received, plus one (mod 2**16)
        self._cycles = 0
        self._expected_before = 0
        # bit k set: the packet k sequence numbers before the highest was received, as of
        # _in_order in-order packets ago (each of which sets the bit of its own number)
        self._window = 0
        self._in_order = 0
        self._last_arrival = float("inf")  # none yet: no inter-packet gap to measure
        self._last_transit: float | None = None

    def feed(self, packet: bytes, arrival: float, clock_rate: int = 8000) -> None:
        """Account one packet received at ``arrival`` (seconds)."""
        if len(packet) < RTP_HEADER_SIZE or packet[0] & 0xC0 != 0x80:
            self.parse_errors += 1
            return
        seq, timestamp, ssrc = _unpack_seq_ts_ssrc(packet, 2)
        if seq == self._next_seq and ssrc == self.ssrc:  # in order: the common case
            if seq == 0:
                self._cycles += SEQ_MOD
            self._next_seq = (seq + 1) & 0xFFFF
            self._in_order += 1  # also its count in received (see there)
        else:
            if ssrc != self.ssrc:
                if self.ssrc is not None:
                    self.ssrc_changes += 1
                self._restart(ssrc, seq)
            elif not self._update_seq(seq):
                return
            self._received += 1
        gap = arrival - self._last_arrival
        if gap > self.longest_ipi:
            self.longest_ipi = gap
        self._last_arrival = arrival
        transit = arrival - timestamp / clock_rate
        last_transit = self._last_transit
        self._last_transit = transit
        if last_transit is not None:
            delta = transit - last_transit
            jitter = self.jitter_last
            jitter += ((delta if delta >= 0.0 else -delta) - jitter) * 0.0625  # exactly / 16
            self.jitter_last = jitter
            if jitter > self.jitter_max:
                self.jitter_max = jitter
            self._jitter_sum += jitter

    def _restart(self, ssrc: int, seq: int) -> None:
        self._expected_before = self.expected
        self.ssrc = ssrc
        self._restarts += 1
        self._follow(seq)
        self._last_transit = None

    def _follow(self, seq: int) -> None:
        """Take ``seq`` as the first packet of a (new) sequence."""
        self._base_seq = seq
        self._next_seq = (seq + 1) & 0xFFFF
        self._cycles = 0
        self._window = 1
        self._received += self._in_order
        self._in_order = 0

    def _current_window(self) -> int:
        """The duplicate window with the in-order packets since it was last updated."""
        run = self._in_order
        if run:
            self._received += run
            self._in_order = 0
            if run >= WINDOW_BITS:
                self._window = _WINDOW_MASK
            else:
                self._window = ((self._window << run) | ((1 << run) - 1)) & _WINDOW_MASK
        return self._window

    def _update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1, simplified, for packets out of order: True when the packet
        counts as received."""
        max_seq = self.max_seq
        delta = (seq - max_seq) % SEQ_MOD
        if delta == 0:
            self.dups += 1
            return False
        if delta < MAX_DROPOUT:  # ahead, with a gap
            if seq < max_seq:
                self._cycles += SEQ_MOD
            self._next_seq = (seq + 1) & 0xFFFF
            self._window = ((self._current_window() << delta) | 1) & _WINDOW_MASK
            return True
        if delta >= SEQ_MOD - MAX_MISORDER:  # late, possibly from before the last wrap
            bit = 1 << (SEQ_MOD - delta)
            window = self._current_window()
            if window & bit:
                self.dups += 1
                return False
            self._window = window | bit
            return True
        # a big jump: a restart of the sequence (the source was reset) only when the
        # next packet follows on; a single stray or very late packet is not counted
        if seq != self._bad_seq:
            self._bad_seq = (seq + 1) % SEQ_MOD
            return False
        self._bad_seq = None
        self._expected_before = self.expected
        self._follow(seq)
        return True

    @property
    def max_seq(self) -> int:
        """The highest sequence number received (modulo 2**16)."""
        return (self._next_seq - 1) & 0xFFFF

    @property
    def expected(self) -> int:
        """Packets the sender sent, judged by sequence numbers (``rtpa_nsent``)."""
        if self.ssrc is None:
            return 0
        return self._expected_before + self._cycles + self.max_seq - self._base_seq + 1

    @property
    def received(self) -> int:
        """Packets received, duplicates and stray packets not counted (``rtpa_nrcvd``):
        an in-order packet only counts itself in ``_in_order``, folded in when the window
        is brought up to date."""
        return self._received + self._in_order

    @property
    def lost(self) -> int:
        """Packets never received (``rtpa_nlost``); never negative."""
        return max(0, self.expected - self.received)

    @property
    def jitter_avg(self) -> float:
        """Mean of the running jitter estimates, seconds."""
        samples = self.received - self._restarts
        return self._jitter_sum / samples if samples else 0.0
