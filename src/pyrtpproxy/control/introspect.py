"""The ``Zsessions`` control-protocol extension: list live sessions (docs/ctl.md).

rtpproxy dispatches on the first character of the command word and answers ``E0`` to
any character outside ``UuLlDdPpSsRrCcNnVvIiQqXxGg``. ``Z`` is outside that set, so no
rtpproxy command can ever mean the same thing, and no client sends it. Only the exact,
case-sensitive grammar ``Zsessions [OFFSET [LIMIT]]`` (decimal numbers, no ``&&``) is
intercepted; anything else (``Z``, ``z``, ``Zx``, ``Zsessions foo``) goes through the
normal parser and gets ``E0`` exactly as from rtpproxy.

This module only turns engine sessions into :mod:`pyrtpproxy.protocol.sessions` views;
that module owns the reply's format: one line of JSON starting with ``{`` (which no
rtpproxy reply does, so a caller can tell it from ``E0``), capped at
:data:`~pyrtpproxy.protocol.sessions.MAX_REPLY_BYTES`, paged by ``next``.
"""

from __future__ import annotations

from itertools import islice

from ..engine.addresses import Endpoint
from ..engine.handler import Engine
from ..engine.session import Leg, Session, Side
from ..protocol.parse import tokenize
from ..protocol.sessions import (
    COMMAND_WORD,
    DEFAULT_LIMIT,
    FORMAT_VERSION,
    MAX_LIMIT,
    MAX_REPLY_BYTES,
    LegSide,
    LegView,
    SessionView,
    encode_reply,
)

__all__ = [
    "COMMAND_WORD",
    "DEFAULT_LIMIT",
    "FORMAT_VERSION",
    "MAX_LIMIT",
    "MAX_REPLY_BYTES",
    "describe",
    "leg_view",
    "match",
    "sessions_reply",
]

_SIDES: dict[Side, LegSide] = {Side.A: "A", Side.B: "B"}


def match(data: bytes) -> tuple[int, int] | None:
    """``(offset, limit)`` if ``data`` is exactly a ``Zsessions`` request, else None."""
    if not data.lstrip(b" \t\r\n").startswith(COMMAND_WORD):
        return None  # the common case costs one startswith
    tokens = tokenize(data)
    if not tokens or tokens[0] != COMMAND_WORD or len(tokens) > 3:
        return None
    numbers = tokens[1:]
    if not all(n.isdigit() and len(n) <= 9 for n in numbers):
        return None
    offset = int(numbers[0]) if numbers else 0
    limit = int(numbers[1]) if len(numbers) > 1 else DEFAULT_LIMIT
    return offset, max(1, min(limit, MAX_LIMIT))


def _endpoint(remote: Endpoint | None) -> str | None:
    if remote is None:
        return None
    host = f"[{remote.host}]" if ":" in remote.host else remote.host
    return f"{host}:{remote.port}"


def leg_view(leg: Leg) -> LegView:
    """One leg as the listing shows it; drops and ignores count RTP and RTCP together."""
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
        dropped=rtp.dropped + rtcp.dropped,
        ignored=rtp.ignored + rtcp.ignored,
        ttl=max(0, leg.ttl),
    )


def describe(session: Session, engine: Engine, now: float) -> SessionView:
    """One session as the listing shows it.

    Leg B receives the creating tag's party's media (the ``from`` party of the creating
    U), leg A the other party's (protocol.md §4). ``idle`` is derived from the timer:
    the full TTL minus what is left, so it has the sweeper's one-second resolution.
    """
    full = engine.config.ttl if session.complete else engine.config.setup_ttl
    ttl = max(0, session.ttl)
    return SessionView(
        call_id=session.call_id.decode("latin-1"),
        tag=session.tag.decode("latin-1"),
        complete=session.complete,
        age=round(max(0.0, now - session.created_at), 3),
        ttl=ttl,
        idle=max(0, full - ttl),
        notify=session.notify_tag is not None,
        from_leg=leg_view(session.legs[Side.B]),
        to_leg=leg_view(session.legs[Side.A]),
    )


def sessions_reply(engine: Engine, offset: int, limit: int, now: float) -> bytes:
    """The reply body (no trailing newline) for ``Zsessions offset limit``."""
    sessions = list(engine.table)
    # A generator, so only the sessions that make it into the page are described.
    views = (describe(s, engine, now) for s in islice(sessions, offset, None))
    return encode_reply(
        views,
        total=len(sessions),
        offset=offset,
        limit=limit,
        ttl=engine.config.ttl,
        setup_ttl=engine.config.setup_ttl,
    )
