"""Read-only commands: Q, G, I and the session listing, answered as plain values."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..protocol import replies
from ..protocol.commands import GetCounters, Info, Introspect, Query
from ..protocol.errors import ErrorCode, ProtocolError
from .addresses import Endpoint
from .session import Leg, Session, Side

if TYPE_CHECKING:
    from .engine import Engine

DEFAULT_QUERY = (b"ttl", b"npkts_ina", b"npkts_ino", b"nrelayed", b"ndropped")
LISTING_FORMAT = 1
MAX_LISTING_BYTES = 32 * 1024  # one page always fits in one UDP datagram


def session_values(
    engine: Engine, session: Session, side: Side, now: float
) -> dict[bytes, int | float]:
    """Every counter ``Q`` can report for ``side`` of ``session``."""
    mine, other = session.legs[side].rtp, session.legs[1 - side].rtp
    analysis = mine.analysis
    assert analysis is not None
    return {
        b"ttl": engine.timers.remaining(session, now),
        b"npkts_ina": mine.packets_in,
        b"npkts_ino": other.packets_in,
        b"nrelayed": mine.packets_relayed + other.packets_relayed,
        b"ndropped": mine.dropped + other.dropped,
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


def query(engine: Engine, cmd: Query, found: tuple[Session, Side], now: float) -> replies.Values:
    """``Q``: the session was found; its modifier is checked only now (E50 before E19)."""
    if cmd.bad_modifier:
        raise ProtocolError(ErrorCode.UNKNOWN_QUERY_MODIFIER, "bad Q modifier")
    values = session_values(engine, *found, now)
    items: list[tuple[bytes, int | float]] = []
    for name in cmd.counters or DEFAULT_QUERY:
        value = values.get(name)
        if value is None:
            raise ProtocolError(ErrorCode.UNKNOWN_QUERY_COUNTER, f"unknown counter {name!r}")
        items.append((name, value))
    reply = replies.Values(tuple(items), cmd.verbose)
    if not replies.fits(reply):
        raise ProtocolError(ErrorCode.QUERY_REPLY_TOO_LONG, "Q reply too long")
    return reply


def get_counters(engine: Engine, cmd: GetCounters, now: float) -> replies.Values:
    """``G``: global counters by name (all of them when none is named)."""
    counters = engine.snapshot(now).g
    items: list[tuple[bytes, int | float]] = []
    for raw in cmd.names:
        value = counters.value(raw.decode("latin-1"))
        if value is None:
            raise ProtocolError(ErrorCode.UNKNOWN_COUNTER, f"unknown counter {raw!r}")
        items.append((raw, value))
    reply = replies.Values(tuple(items), cmd.verbose)
    if not replies.fits(reply):
        raise ProtocolError(ErrorCode.COUNTERS_REPLY_TOO_LONG, "G reply too long")
    return reply


def info(engine: Engine, cmd: Info, now: float) -> replies.InfoReply:
    """``I``."""
    g = engine.snapshot(now).g
    return replies.InfoReply(
        sessions_created=g.nsess_created,
        active_sessions=len(engine.table),
        packets_received=g.npkts_rcvd,
        packets_transmitted=g.npkts_relayed + g.npkts_played,
        with_load=cmd.load,
    )


def _endpoint(remote: Endpoint | None) -> str | None:
    if remote is None:
        return None
    host = f"[{remote.host}]" if ":" in remote.host else remote.host
    return f"{host}:{remote.port}"


def _leg(engine: Engine, leg: Leg, now: float) -> dict[str, Any]:
    local = leg.local
    host = (local.reply_address or local.host or "*") if local is not None else None
    rtp, rtcp = leg.rtp, leg.rtcp
    return {
        "side": leg.side.name,
        "local": host,
        "port": leg.port,
        "remote": _endpoint(rtp.remote),
        "latched": rtp.latched,
        "asymmetric": leg.asymmetric,
        "rtp_in": rtp.packets_in,
        "rtp_relayed": rtp.packets_relayed,
        "rtcp_in": rtcp.packets_in,
        "rtcp_remote": _endpoint(rtcp.remote),
        "dropped": rtp.dropped + rtcp.dropped,
        "ignored": rtp.ignored + rtcp.ignored,
        "ttl": engine.timers.leg_remaining(leg, now),
    }


def describe(engine: Engine, session: Session, now: float) -> dict[str, Any]:
    """One session for the listing. Leg B receives the creating tag's party's media (the
    ``from`` party), leg A the other party's (protocol.md §4)."""
    full = engine.config.ttl if session.complete else engine.config.setup_ttl
    ttl = engine.timers.remaining(session, now)
    return {
        "call_id": session.call_id.decode("latin-1"),
        "tag": session.tag.decode("latin-1"),
        "complete": session.complete,
        "age": round(max(0.0, now - session.created_at), 3),
        "ttl": ttl,
        "idle": max(0, full - ttl),
        "notify": session.notify_tag is not None,
        "from": _leg(engine, session.legs[Side.B], now),
        "to": _leg(engine, session.legs[Side.A], now),
    }


def introspect(engine: Engine, cmd: Introspect, now: float) -> replies.Raw:
    """``Zsessions offset limit``: one page of the session listing (docs/ctl.md)."""
    sessions = list(engine.table)
    items: list[bytes] = []
    size = 0
    index = cmd.offset
    end = min(len(sessions), cmd.offset + cmd.limit)
    while index < end:
        item = json.dumps(describe(engine, sessions[index], now), separators=(",", ":"))
        encoded = item.encode("ascii")  # json.dumps escapes everything non-ASCII
        if items and size + len(encoded) > MAX_LISTING_BYTES - 256:
            break
        items.append(encoded)
        size += len(encoded) + 1
        index += 1
    header = {
        "v": LISTING_FORMAT,
        "total": len(sessions),
        "offset": cmd.offset,
        "next": index if index < len(sessions) else None,
        "ttl": engine.config.ttl,
        "setup_ttl": engine.config.setup_ttl,
    }
    head = json.dumps(header, separators=(",", ":")).encode("ascii")
    return replies.Raw(head[:-1] + b',"sessions":[' + b",".join(items) + b"]}")
