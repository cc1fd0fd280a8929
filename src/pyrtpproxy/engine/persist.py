"""Sessions as plain values and back: what a restart keeps (``--state-file``).

Pure, like the rest of the engine. :func:`export_session` turns a live session into a
:class:`SessionState`; :func:`restore_sessions` rebuilds sessions from such values,
claims their ports (asking the host probe to bind them, as a ``U`` does) and returns the
events a ``U`` would have caused (``LegOpened``, ``TapStarted``), so the media layer opens
and aims the sockets the usual way.

Times are seconds relative to ``now`` (negative: in the past) or None for "never": the
engine's clock is monotonic and starts anew with the process, so the shell stores them
as wall-clock times and converts them back. Kept: call-id, tags, ports and local
addresses, signalled and latched addresses, latching state, timers (``&& S ttl``
included), per-stream counters, notification request, taps. Not kept: the RTP
analysis (jitter, loss; it restarts with the next packet) and the global counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from .addresses import Endpoint, LocalAddress, NotifyTarget
from .events import Event, LegOpened, Outbox, PortsReleased, TapStarted
from .latching import SAFE, Latching
from .ports import HostProbe, PortAllocator
from .session import NEVER, Leg, Session, Stream
from .table import SessionTable
from .taps import Tap, UdpCopy
from .timers import Deadlines

STREAM_COUNTERS = (
    "fast_count",
    "fast_bytes",
    "relayed_bytes",
    "accepted",
    "relayed",
    "dropped",
    "ignored",
    "incomplete",
)


class StreamState(NamedTuple):
    """One stream's party address, latching state and counters."""

    remote: Endpoint | None
    latched: bool
    from_media: bool
    last_ssrc: int | None
    last_seq: int
    signalled_at: float | None
    sampled_at: float | None
    seen_at: float | None
    relatch_count: int
    counters: tuple[int, ...]  # in the order of STREAM_COUNTERS


class LegState(NamedTuple):
    """One leg: its port pair, rules, timer and tap."""

    port: int
    local: LocalAddress | None
    asymmetric: bool
    weak: bool
    on_hold: bool
    codecs: bytes | None
    expires_at: float | None
    ttl: int | None
    tap: Tap | None
    rtp: StreamState
    rtcp: StreamState


class SessionState(NamedTuple):
    """A session as a value; times relative to the ``now`` it was exported at.

    Plain tuples (these and the two below), so that exporting every session once a
    second is cheap and the journal can store them as JSON arrays as they are."""

    call_id: bytes
    tag: bytes
    created_at: float
    complete: bool
    strong: bool
    notify_target: bytes | None  # the -n spec it asked for
    notify_tag: bytes | None
    notify_source: str | None
    legs: tuple[LegState, LegState]


class Skipped(NamedTuple):
    """A session that could not be restored, and why (for the log)."""

    call_id: bytes
    tag: bytes
    reason: str


class Restored(NamedTuple):
    """What :func:`restore_sessions` did: the events for the shell, and what it left out."""

    events: tuple[Event, ...]
    restored: int
    skipped: tuple[Skipped, ...]


def _absolute(offset: float | None, now: float) -> float:
    return NEVER if offset is None else now + offset


def _export_stream(stream: Stream, now: float) -> StreamState:
    # positional and without loops: this runs for every stream once a second
    return StreamState(
        stream.remote,
        stream.latched,
        stream.from_media,
        stream.last_ssrc,
        stream.last_seq,
        None if stream.signalled_at == NEVER else stream.signalled_at - now,
        None if stream.sampled_at == NEVER else stream.sampled_at - now,
        None if stream.seen_at == NEVER else stream.seen_at - now,
        stream.relatch_count,
        (
            stream.fast_count,
            stream.fast_bytes,
            stream.relayed_bytes,
            stream.accepted,
            stream.relayed,
            stream.dropped,
            stream.ignored,
            stream.incomplete,
        ),
    )


def _export_leg(leg: Leg, now: float) -> LegState:
    return LegState(
        leg.port,
        leg.local,
        leg.asymmetric,
        leg.weak,
        leg.on_hold,
        leg.codecs,
        None if leg.expires_at == NEVER else leg.expires_at - now,
        leg.ttl,
        leg.tap,
        _export_stream(leg.rtp, now),
        _export_stream(leg.rtcp, now),
    )


def export_session(session: Session, now: float) -> SessionState:
    """``session`` as a value, its times relative to ``now``."""
    a, b = session.legs
    return SessionState(
        call_id=session.call_id,
        tag=session.tag,
        created_at=session.created_at - now,
        complete=session.complete,
        strong=session.strong,
        notify_target=None if session.notify_target is None else session.notify_target.spec,
        notify_tag=session.notify_tag,
        notify_source=session.notify_source,
        legs=(_export_leg(a, now), _export_leg(b, now)),
    )


def _restore_stream(stream: Stream, state: StreamState, now: float) -> None:
    # the remote is set without StreamChanged: LegOpened aims the new sockets at it
    stream.remote = state.remote
    stream.latched = state.latched
    stream.from_media = state.from_media
    if not state.from_media:  # an address from SDP is the host --latching safe trusts
        stream.signalled = state.remote
    stream.last_ssrc = state.last_ssrc
    stream.last_seq = state.last_seq
    stream.signalled_at = _absolute(state.signalled_at, now)
    stream.sampled_at = _absolute(state.sampled_at, now)
    stream.seen_at = _absolute(state.seen_at, now)
    stream.relatch_count = state.relatch_count
    for name, value in zip(STREAM_COUNTERS, state.counters, strict=True):
        setattr(stream, name, value)


class SessionRestorer:
    """Rebuilds sessions into an engine's table; see :func:`restore_sessions`."""

    def __init__(
        self,
        table: SessionTable,
        timers: Deadlines,
        ports: PortAllocator,
        probe: HostProbe,
        outbox: Outbox,
        locals_: Iterable[LocalAddress],
        notify_target: Callable[[bytes], NotifyTarget | None],
        latching: Latching = SAFE,
    ) -> None:
        self._latching = latching
        self._table = table
        self._timers = timers
        self._ports = ports
        self._probe = probe
        self._outbox = outbox
        self._locals = tuple(locals_)
        self._notify_target = notify_target

    def restore(self, states: Iterable[SessionState], now: float) -> Restored:
        """Restore every state that can be; the others are :class:`Skipped`."""
        restored = 0
        skipped: list[Skipped] = []
        for state in states:
            reason = self._restore_one(state, now)
            if reason is None:
                restored += 1
            else:
                skipped.append(Skipped(state.call_id, state.tag, reason))
        return Restored(self._outbox.take(), restored, tuple(skipped))

    def _local(self, stored: LocalAddress) -> LocalAddress:
        """The configured address a stored one stands for (its advertised address may
        have changed since), or the stored one (an ``l``/``r`` address)."""
        for local in self._locals:
            if (local.host, local.ipv6, local.label) == (stored.host, stored.ipv6, stored.label):
                return local
        return LocalAddress(stored.host, ipv6=stored.ipv6)

    def _claim(self, local: LocalAddress, port: int) -> str | None:
        """Take ``port`` for a restored leg or copy: None, or why it cannot be had."""
        if not self._ports.claim(port):
            return f"port {port} is outside the port range or already in use"
        try:
            bound = self._probe.try_bind(local, port)
        except OSError as exc:  # an address the host no longer has, say
            self._ports.release(port)
            return f"port {port} on {local.bind_host}: {exc.strerror or exc}"
        if not bound:
            self._ports.release(port)
            return f"port {port} or {port + 1} on {local.bind_host} is busy"
        return None

    def _restore_one(self, state: SessionState, now: float) -> str | None:
        if self._table.find(state.call_id, state.tag, None) is not None:
            return "a session with this call-id and tag exists already"
        session = Session(
            state.call_id, state.tag, now + state.created_at, self._outbox, self._latching
        )
        claimed: list[Leg] = []
        for leg, leg_state in zip(session.legs, state.legs, strict=True):
            leg.local = None if leg_state.local is None else self._local(leg_state.local)
            if not leg_state.port:
                continue
            if leg.local is None:
                reason: str | None = f"port {leg_state.port} has no local address"
            else:
                reason = self._claim(leg.local, leg_state.port)
            if reason is not None:
                for done in claimed:  # bound, never served: the media layer closes them
                    assert done.local is not None
                    self._ports.release(done.port)
                    self._outbox.emit(PortsReleased(done.local, done.port))
                return reason
            leg.port = leg_state.port
            claimed.append(leg)
        session.complete = state.complete
        session.strong = state.strong
        session.created = True
        if state.notify_target is not None and state.notify_tag is not None:
            target = self._notify_target(state.notify_target)
            if target is not None:
                session.notify_target = target
                session.notify_tag = state.notify_tag
                session.notify_source = state.notify_source
        for leg, leg_state in zip(session.legs, state.legs, strict=True):
            leg.asymmetric = leg_state.asymmetric
            leg.weak = leg_state.weak
            leg.on_hold = leg_state.on_hold
            leg.codecs = leg_state.codecs
            leg.expires_at = _absolute(leg_state.expires_at, now)
            leg.ttl = leg_state.ttl
            _restore_stream(leg.rtp, leg_state.rtp, now)
            _restore_stream(leg.rtcp, leg_state.rtcp, now)
        self._table.add(session)
        for leg in claimed:
            assert leg.local is not None
            self._outbox.emit(LegOpened(leg, leg.local, leg.port))
        for leg, leg_state in zip(session.legs, state.legs, strict=True):
            if leg_state.tap is not None:
                self._restore_tap(leg, leg_state.tap)
        self._timers.file(session)
        return None

    def _restore_tap(self, leg: Leg, tap: Tap) -> None:
        """Reopen a leg's recording (the files are appended to) or copy; one that cannot
        be reopened is dropped, the session is kept."""
        if isinstance(tap, UdpCopy):
            local = self._local(tap.local)
            if self._claim(local, tap.port) is not None:
                return
            tap = UdpCopy(tap.dest, local, tap.port, tap.rtcp)
        if not self._probe.open_tap(leg, tap):
            if isinstance(tap, UdpCopy):
                self._ports.release(tap.port)
            return
        leg.tap = tap
        self._outbox.emit(TapStarted(leg, tap))
