"""The latching policy (``--latching``) and the values its rules use.

The rules themselves are in :mod:`pyrtpproxy.engine.session` (``Stream._source_ok``
and the functions next to it); this module holds what they are configured with and
the one data structure the safe policy needs, so that both stay pure and small.

Why a policy at all: rtpproxy lets the first source that reaches a port own it, and
after every U/L lets any RTP source take it over for 10 seconds. Someone who sprays
the port range then receives the media of calls he is not part of, or injects his own
(the "RTP Bleed" class: CVE-2017-14114 for rtpproxy, CVE-2025-53399 for rtpengine).
The ``safe`` policy trusts the host the SIP proxy signalled and makes every other
source wait out a short learning window, which the signalled host wins by speaking.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .addresses import Endpoint

DEFAULT_WINDOW = 0.2  # seconds a source other than the signalled host waits
CANDIDATE_SLOTS = 8  # sources a learning window keeps count of
# A winner has sent at least this many packets since its window began (its deciding one
# included): a phone sends 5 to 10 in 200 ms, a scan over the port range hits a port once
# per sweep, so a sweep has to come back twice after the window to win a silent leg.
MIN_CANDIDATE_PACKETS = 3


class LatchingPolicy(Enum):
    """Which rules decide the source a stream relays from."""

    SAFE = "safe"  # the signalled host at once, any other host after a learning window
    RTPPROXY = "rtpproxy"  # the reference's rules: the first source wins


@dataclass(frozen=True, slots=True)
class Latching:
    """The policy and, for ``safe``, the learning window in seconds."""

    policy: LatchingPolicy = LatchingPolicy.SAFE
    window: float = DEFAULT_WINDOW

    @property
    def safe(self) -> bool:
        """Whether the hijack-safe rules apply."""
        return self.policy is LatchingPolicy.SAFE


SAFE = Latching()
RTPPROXY = Latching(LatchingPolicy.RTPPROXY)


class LatchCause(Enum):
    """Why a stream latched (or re-latched) to a source; the log line says it."""

    FIRST_SOURCE = "first source"  # rtpproxy: whatever arrived first
    SIGNALLED = "signalled host"  # safe: the host the U/L named
    MEDIA_HOST = "host of the leg's RTP"  # safe: RTCP from where the leg's RTP latched
    LEARNED = "learning window passed"  # safe: the signalled host stayed silent
    SAME_STREAM = "same SSRC, close sequence"  # re-latch: the party's NAT mapping moved
    UPDATE = "within 10 s of a U/L"  # re-latch: signalling just refreshed the leg


class Candidates:
    """Sources heard during one learning window, with how many packets each sent.

    At most :data:`CANDIDATE_SLOTS` are kept: a newcomer takes the place of the quietest
    one and its count plus one (the "space-saving" count), so a source that sends more
    than one packet in :data:`CANDIDATE_SLOTS` of the window's (a phone at 50 packets a
    second) is never forgotten, however many one-off sources come and go.
    """

    __slots__ = ("_counts", "ends_at")

    def __init__(self, ends_at: float) -> None:
        self.ends_at = ends_at
        self._counts: dict[Endpoint, int] = {}

    def count(self, src: Endpoint) -> None:
        """One more packet from ``src``."""
        counts = self._counts
        if src in counts or len(counts) < CANDIDATE_SLOTS:
            counts[src] = counts.get(src, 0) + 1
            return
        quietest = min(counts, key=counts.__getitem__)
        counts[src] = counts.pop(quietest) + 1

    def leads(self, src: Endpoint) -> bool:
        """Whether ``src`` has sent :data:`MIN_CANDIDATE_PACKETS` or more, and at least
        as many as any other source."""
        count = self._counts.get(src, 0)
        return count >= MIN_CANDIDATE_PACKETS and count == max(self._counts.values())
