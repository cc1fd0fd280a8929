"""Read-only commands: Q, G, I and the session listing, answered as plain values."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice

from ..protocol import replies
from ..protocol.commands import GetCounters, Info, Introspect, Query
from ..protocol.errors import ErrorCode, ProtocolError
from ..protocol.sessions import LegSide, LegView, SessionView, encode_reply
from .addresses import Endpoint
from .counters import Snapshot
from .rtp import RtpAnalysis
from .session import Leg, Session, Side
from .timers import Deadlines

DEFAULT_QUERY = (b"ttl", b"npkts_ina", b"npkts_ino", b"nrelayed", b"ndropped")


def session_values(
    timers: Deadlines, session: Session, side: Side, now: float
) -> dict[bytes, int | float]:
    """Every counter ``Q`` can report for ``side`` of ``session``."""
    mine, other = session.legs[side].rtp, session.legs[1 - side].rtp
    analysis = mine.analysis or RtpAnalysis()  # no packet yet: every count is 0
    return {
        b"ttl": timers.remaining(session, now),
        b"npkts_ina": mine.packets_in,
        b"npkts_ino": other.packets_in,
        b"nrelayed": mine.packets_relayed + other.packets_relayed,
        b"ndropped": mine.dropped + mine.muted + other.dropped + other.muted,
        b"rtpa_nsent": analysis.expected,
        b"rtpa_nrcvd": analysis.received,
        b"rtpa_ndups": analysis.dups,
        b"rtpa_nlost": analysis.lost,
        b"rtpa_perrs": analysis.parse_errors,
        b"longest_ipi": analysis.longest_ipi,
        b"rtpa_jlast": analysis.jitter_last,
        b"rtpa_jmax": analysis.jitter_max,
        b"rtpa_javg": analysis.jitter_avg,
    }


def _values(
    names: tuple[bytes, ...],
    lookup: Callable[[bytes], int | float | None],
    verbose: bool,
    unknown: ErrorCode,
    too_long: ErrorCode,
) -> replies.Values:
    """The named values for a Q or G reply: ``unknown`` for a name without one,
    ``too_long`` when the reply would not fit rtpproxy's reply buffer."""
    items: list[tuple[bytes, int | float]] = []
    for name in names:
        value = lookup(name)
        if value is None:
            raise ProtocolError(unknown, f"unknown counter {name!r}")
        items.append((name, value))
    reply = replies.Values(tuple(items), verbose)
    if not replies.fits(reply):
        raise ProtocolError(too_long, "reply too long")
    return reply


def query(timers: Deadlines, cmd: Query, found: tuple[Session, Side], now: float) -> replies.Values:
    """``Q``: the session was found; its modifier is checked only now (E50 before E19)."""
    if cmd.bad_modifier:
        raise ProtocolError(ErrorCode.UNKNOWN_QUERY_MODIFIER, "bad Q modifier")
    values = session_values(timers, *found, now)
    return _values(
        cmd.counters or DEFAULT_QUERY,
        values.get,
        cmd.verbose,
        ErrorCode.UNKNOWN_QUERY_COUNTER,
        ErrorCode.QUERY_REPLY_TOO_LONG,
    )


def get_counters(snapshot: Snapshot, cmd: GetCounters) -> replies.Values:
    """``G``: global counters by name."""
    counters = snapshot.g
    return _values(
        cmd.names,
        lambda name: counters.value(name.decode("latin-1")),
        cmd.verbose,
        ErrorCode.UNKNOWN_COUNTER,
        ErrorCode.COUNTERS_REPLY_TOO_LONG,
    )


def info(snapshot: Snapshot, active_sessions: int, cmd: Info) -> replies.InfoReply:
    """``I``."""
    g = snapshot.g
    return replies.InfoReply(
        sessions_created=g.nsess_created,
        active_sessions=active_sessions,
        packets_received=g.npkts_rcvd,
        packets_transmitted=g.npkts_relayed + g.npkts_played,
        with_load=cmd.load,
    )


def _endpoint(remote: Endpoint | None) -> str | None:
    if remote is None:
        return None
    host = f"[{remote.host}]" if ":" in remote.host else remote.host
    return f"{host}:{remote.port}"


_SIDES: dict[Side, LegSide] = {Side.A: "A", Side.B: "B"}


def leg_view(timers: Deadlines, leg: Leg, now: float) -> LegView:
    """One leg as the listing shows it; drops (muted RTP included) and ignores count RTP
    and RTCP together."""
    local = leg.local
    host = (local.reply_address or local.host or "*") if local is not None else None
    rtp, rtcp = leg.rtp, leg.rtcp
    return LegView(
        side=_SIDES[leg.side],
        local=host,
        port=leg.port,
        remote=_endpoint(rtp.remote),
        latched=rtp.latched,
        asymmetric=leg.asymmetric,
        rtp_in=rtp.packets_in,
        rtp_relayed=rtp.packets_relayed,
        rtcp_in=rtcp.packets_in,
        rtcp_remote=_endpoint(rtcp.remote),
        dropped=rtp.dropped + rtp.muted + rtcp.dropped,
        ignored=rtp.ignored + rtcp.ignored,
        ttl=timers.leg_remaining(leg, now),
    )


def session_view(timers: Deadlines, session: Session, now: float) -> SessionView:
    """One session as the listing shows it.

    Leg B receives the creating tag's party's media (the ``from`` party of the creating
    U), leg A the other party's (protocol.md §4). ``idle`` is the full TTL minus what is
    left, in whole seconds.
    """
    full = timers.full(session)
    ttl = timers.remaining(session, now)
    return SessionView(
        call_id=session.call_id.decode("latin-1"),
        tag=session.tag.decode("latin-1"),
        complete=session.complete,
        age=round(max(0.0, now - session.created_at), 3),
        ttl=ttl,
        idle=max(0, full - ttl),
        notify=session.notify_tag is not None,
        from_leg=leg_view(timers, session.legs[Side.B], now),
        to_leg=leg_view(timers, session.legs[Side.A], now),
    )


def introspect(
    sessions: Sequence[Session], timers: Deadlines, cmd: Introspect, now: float
) -> replies.Raw:
    """``Zsessions offset limit``: one page of the session listing (docs/ctl.md)."""
    # A generator, so only the sessions that make it into the page are described.
    views = (session_view(timers, s, now) for s in islice(sessions, cmd.offset, None))
    return replies.Raw(
        encode_reply(
            views,
            total=len(sessions),
            offset=cmd.offset,
            limit=cmd.limit,
            ttl=timers.ttl,
            setup_ttl=timers.setup_ttl,
        )
    )
