"""Every count the relay keeps, in one place (relay-behaviour.md §8, docs/metrics.md).

:class:`Counters` is the sole owner. The engine counts what it emits (through
:meth:`Counters.count`) and folds a session's per-stream counters in when the session
ends (:meth:`Counters.retire`); the control layer counts commands, the media layer send
errors, the kernel path its failures, the notifier its deliveries, each through the
methods and fields here. ``G``, ``I``, metrics, logs and ``ctl`` read a
:class:`Snapshot`: totals of ended sessions plus what live sessions hold now.

Per-stream packet counters (``Stream.fast_count`` and friends) stay on the streams
because the media fast path increments them per packet; they are summed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from .events import (
    EndReason,
    Event,
    Latched,
    PlayerCreated,
    PlayerEnded,
    SessionCompleted,
    SessionCreated,
    SessionEnded,
)

if TYPE_CHECKING:
    from .session import Session, Stream

PPS_INTERVAL = 1.0  # seconds: pps_in is the receive rate over at least this long


@dataclass(slots=True)
class GlobalCounters:
    """rtpproxy's ``G`` counters of ended sessions and commands (names are the wire's)."""

    nsess_created: int = 0
    nsess_destroyed: int = 0
    nsess_timeout: int = 0
    nsess_complete: int = 0
    nsess_nortp: int = 0
    nsess_owrtp: int = 0
    nsess_nortcp: int = 0
    nsess_owrtcp: int = 0
    nplrs_created: int = 0
    nplrs_destroyed: int = 0
    npkts_rcvd: int = 0
    npkts_played: int = 0
    npkts_relayed: int = 0
    npkts_resizer_in: int = 0
    npkts_resizer_out: int = 0
    npkts_resizer_discard: int = 0
    npkts_discard: int = 0
    total_duration: float = 0.0
    ncmds_rcvd: int = 0
    ncmds_rcvd_ndups: int = 0
    ncmds_succd: int = 0
    ncmds_errs: int = 0
    ncmds_repld: int = 0
    rtpa_nsent: int = 0
    rtpa_nrcvd: int = 0
    rtpa_ndups: int = 0
    rtpa_nlost: int = 0
    rtpa_perrs: int = 0
    pps_in: float = 0.0

    def value(self, name: str) -> int | float | None:
        """A counter by its ``G`` name; None for a name that is not one."""
        return getattr(self, name) if name in COUNTER_NAMES else None


COUNTER_NAMES: frozenset[str] = frozenset(f.name for f in fields(GlobalCounters))
DROP_REASONS = (
    "no_destination",
    "wrong_source",
    "foreign_source",
    "learning",
    "incomplete_session",
    "muted",
)
PROTOCOLS = ("rtp", "rtcp")
FORWARDING_PATHS = ("kernel", "user")  # who relayed a packet: nftables, or this process


@dataclass(slots=True)
class RelayCounters:
    """Counts beyond rtpproxy's ``G`` set (exported as metrics only)."""

    sessions_deleted: int = 0
    sessions_failed: int = 0
    bytes_relayed: int = 0  # of ended sessions
    latched: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS, 0))
    relatched: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS, 0))
    drops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    send_errors: int = 0  # media sends the kernel refused
    kernel_failures: int = 0  # nftables batches refused
    kernel_packets: int = 0  # relayed by nftables (the rest of npkts_relayed by us)
    notifications_sent: int = 0
    notifications_failed: int = 0  # delivery attempts that failed (each is retried)
    notifications_dropped: int = 0  # given up: queue full
    recording_errors: int = 0  # recording files that failed to write (disk full...)
    resolve_failures: int = 0  # lookups of advertised DNS names that failed
    sessions_restored: int = 0  # brought back from the --state-file journal at start
    sessions_not_restored: int = 0  # in the journal, but their ports could not be had
    state_write_failures: int = 0  # journal writes that failed (disk full...)
    sessions_refused_overload: int = 0  # new sessions refused with E98 (--overload_prot)
    control_connections_refused: int = 0  # closed at once: 100 open (unix: 100 waiting)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All counters at one moment; ``g`` has rtpproxy's ``G`` values, live sessions in."""

    g: GlobalCounters
    relay: RelayCounters
    bytes_relayed: int
    drops: dict[str, int]
    sessions_active: int
    sessions_incomplete: int
    streams_latched: int

    @property
    def relayed_by_path(self) -> dict[str, int]:
        """``npkts_relayed`` split by :data:`FORWARDING_PATHS`: the kernel's share is
        counted as its counters are folded in, the same moment they reach the streams."""
        kernel = self.relay.kernel_packets
        return {"kernel": kernel, "user": self.g.npkts_relayed - kernel}


class SessionTotals(NamedTuple):
    """What one session's streams add up to (rtpproxy's npkts_* rules)."""

    received: int  # npkts_rcvd: accepted or refused by the source checks
    relayed: int  # npkts_relayed
    no_destination: int  # accepted, but the other party's address was unknown
    wrong_source: int  # refused by the latching rules from a latched or signalled host
    foreign_source: int  # refused: from a host neither latched nor signalled
    learning: int  # held back while a learning window ran (--latching safe)
    incomplete: int  # arrived before the session was complete (npkts_discard too)
    muted: int  # a prompt played to the party they were for (npkts_discard too)
    bytes_relayed: int
    latched: int  # streams latched now

    @property
    def discarded(self) -> int:
        """``npkts_discard``: every refusal of the source checks, early packets, and packets
        muted while a prompt plays."""
        return (
            self.wrong_source + self.foreign_source + self.learning + self.incomplete + self.muted
        )


def session_totals(session: Session) -> SessionTotals:
    """One pass over the session's four streams."""
    received = relayed = no_destination = refused = foreign = held = incomplete = muted = 0
    size = latched = 0
    for stream in session.streams():
        received += stream.packets_in + stream.ignored
        relayed += stream.packets_relayed
        no_destination += stream.dropped
        refused += stream.ignored
        foreign += stream.foreign
        held += stream.held
        incomplete += stream.incomplete
        muted += stream.muted
        size += stream.bytes_relayed
        latched += stream.latched
    wrong = refused - foreign - held
    return SessionTotals(
        received, relayed, no_destination, wrong, foreign, held, incomplete, muted, size, latched
    )


def _silent(session: Session) -> bool:
    """No packet ever reached the session's streams (set up and torn down by signalling
    alone): every count of :func:`session_totals` and :func:`rtpa_counts` is zero. Each
    packet that arrives is counted in one of these, whichever path it takes."""
    for leg in session.legs:
        for stream in (leg.rtp, leg.rtcp):
            if (
                stream.fast_count
                or stream.accepted
                or stream.ignored
                or stream.incomplete
                or stream.muted
            ):
                return False
    return True


def _add_drops(drops: dict[str, int], totals: SessionTotals) -> None:
    drops["no_destination"] += totals.no_destination
    drops["wrong_source"] += totals.wrong_source
    drops["foreign_source"] += totals.foreign_source
    drops["learning"] += totals.learning
    drops["incomplete_session"] += totals.incomplete
    drops["muted"] += totals.muted


def rtpa_counts(session: Session) -> tuple[int, int, int, int, int]:
    """The ``rtpa_*`` sums of a session's RTP streams: sent, received, duplicates, lost,
    parse errors."""
    sent = rcvd = dups = lost = perrs = 0
    for leg in session.legs:
        analysis = leg.rtp.analysis
        if analysis is None:
            continue
        sent += analysis.expected
        rcvd += analysis.received
        dups += analysis.dups
        lost += analysis.lost
        perrs += analysis.parse_errors
    return sent, rcvd, dups, lost, perrs


class Counters:
    """The relay's counters: ``g`` (rtpproxy's) and ``relay`` (ours)."""

    __slots__ = ("_pps_sample", "g", "relay")

    def __init__(self) -> None:
        self.g = GlobalCounters()
        self.relay = RelayCounters()
        self._pps_sample: tuple[float, int] | None = None

    # --- engine events -----------------------------------------------------------------

    def count(self, event: Event) -> None:
        """Count one engine event (the engine's outbox calls this for every event)."""
        counting = _COUNTING.get(type(event))
        if counting is not None:
            counting(self, event)

    def _created(self, event: SessionCreated) -> None:
        self.g.nsess_created += 1

    def _completed(self, event: SessionCompleted) -> None:
        self.g.nsess_complete += 1

    def _latched(self, event: Latched) -> None:
        protocol = "rtcp" if event.stream.is_rtcp else "rtp"
        (self.relay.relatched if event.relatched else self.relay.latched)[protocol] += 1

    def _ended(self, event: SessionEnded) -> None:
        if event.reason is EndReason.FAILED:
            self.relay.sessions_failed += 1
            return
        self.g.nsess_destroyed += 1
        if event.reason is EndReason.TIMEOUT:
            self.g.nsess_timeout += 1
        else:
            self.relay.sessions_deleted += 1

    def _player_created(self, event: PlayerCreated) -> None:
        self.g.nplrs_created += 1

    def _player_ended(self, event: PlayerEnded) -> None:
        self.g.nplrs_destroyed += 1

    def played(self, packets: int) -> None:
        """Players sent ``packets`` prompt packets."""
        self.g.npkts_played += packets

    def retire(self, session: Session, now: float) -> None:
        """Fold the counters of a session that just left the table into the totals."""
        g, relay = self.g, self.relay
        totals = None if _silent(session) else session_totals(session)
        if totals is not None:
            _add_drops(relay.drops, totals)
        if not session.created:
            return  # a failed creation never existed for rtpproxy's counters
        g.total_duration += max(0.0, now - session.created_at)
        if session.complete:  # rtpproxy judges media only of sessions that had both legs
            a, b = session.legs
            rtp_ways = (a.rtp.packets_in > 0) + (b.rtp.packets_in > 0)
            rtcp_ways = (a.rtcp.packets_in > 0) + (b.rtcp.packets_in > 0)
            g.nsess_nortp += rtp_ways == 0
            g.nsess_owrtp += rtp_ways == 1
            g.nsess_nortcp += rtcp_ways == 0
            g.nsess_owrtcp += rtcp_ways == 1
        if totals is None:
            return  # signalling only: every stream count is zero
        g.npkts_rcvd += totals.received
        g.npkts_relayed += totals.relayed
        g.npkts_discard += totals.discarded
        relay.bytes_relayed += totals.bytes_relayed
        sent, received, dups, lost, perrs = rtpa_counts(session)
        g.rtpa_nsent += sent
        g.rtpa_nrcvd += received
        g.rtpa_ndups += dups
        g.rtpa_nlost += lost
        g.rtpa_perrs += perrs

    def forwarded(
        self, stream: Stream, packets: int, size: int, seq: int | None, now: float
    ) -> None:
        """Packets the kernel relayed for ``stream`` (see ``Stream.note_forwarded``); if
        its session has already ended, they go straight into the totals."""
        stream.note_forwarded(packets, size, seq, now)
        self.relay.kernel_packets += packets
        if stream.leg.session.ended and stream.leg.session.created:
            self.g.npkts_rcvd += packets
            self.g.npkts_relayed += packets
            self.relay.bytes_relayed += size

    def resized(self, taken: int, relayed: int, discarded: int) -> None:
        """Packets taken into a re-packetizer, relayed out of one, thrown away by one."""
        self.g.npkts_resizer_in += taken
        self.g.npkts_resizer_out += relayed
        self.g.npkts_resizer_discard += discarded

    # --- control commands --------------------------------------------------------------

    def command_received(self) -> None:
        """A command arrived (UDP retransmissions answered from the cache excluded)."""
        self.g.ncmds_rcvd += 1

    def command_replied(self, succeeded: bool) -> None:
        """A command was executed and answered."""
        if succeeded:
            self.g.ncmds_succd += 1
        else:
            self.g.ncmds_errs += 1
        self.g.ncmds_repld += 1

    def command_refused(self) -> None:
        """A datagram without a cookie: counted as received and failed, answered E5."""
        self.g.ncmds_rcvd += 1
        self.g.ncmds_errs += 1

    def retransmission_answered(self) -> None:
        """A UDP retransmission was answered from the reply cache."""
        self.g.ncmds_rcvd_ndups += 1
        self.g.ncmds_repld += 1

    # --- reading -----------------------------------------------------------------------

    def snapshot(self, sessions: Iterable[Session], now: float) -> Snapshot:
        """Totals plus the live sessions' counters, with ``pps_in`` brought up to date."""
        live_rcvd = live_relayed = live_discard = 0
        live_bytes = active = incomplete = latched = 0
        drops = dict(self.relay.drops)
        for session in sessions:
            active += 1
            incomplete += not session.complete
            totals = session_totals(session)
            live_rcvd += totals.received
            live_relayed += totals.relayed
            live_discard += totals.discarded
            live_bytes += totals.bytes_relayed
            latched += totals.latched
            _add_drops(drops, totals)
        received = self.g.npkts_rcvd + live_rcvd
        # rtpa_* are summed when streams end, as in rtpproxy (Q shows live streams)
        return Snapshot(
            g=replace(
                self.g,
                npkts_rcvd=received,
                npkts_relayed=self.g.npkts_relayed + live_relayed,
                npkts_discard=self.g.npkts_discard + live_discard,
                pps_in=self._pps(received, now),
            ),
            relay=self.relay,
            bytes_relayed=self.relay.bytes_relayed + live_bytes,
            drops=drops,
            sessions_active=active,
            sessions_incomplete=incomplete,
            streams_latched=latched,
        )

    def _pps(self, received: int, now: float) -> float:
        """Packets per second received, over the last :data:`PPS_INTERVAL` or more."""
        sample = self._pps_sample
        if sample is None:
            self._pps_sample = (now, received)
        elif now - sample[0] >= PPS_INTERVAL:
            self.g.pps_in = max(0, received - sample[1]) / (now - sample[0])
            self._pps_sample = (now, received)
        return self.g.pps_in


_COUNTING: dict[type, Callable[[Counters, Any], None]] = {
    SessionCreated: Counters._created,
    SessionCompleted: Counters._completed,
    Latched: Counters._latched,
    SessionEnded: Counters._ended,
    PlayerCreated: Counters._player_created,
    PlayerEnded: Counters._player_ended,
}
