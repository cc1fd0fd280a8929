"""The ``Zsessions`` control-protocol extension: list live sessions (docs/ctl.md).

rtpproxy dispatches on the first character of the command word and answers ``E0`` to
any character outside ``UuLlDdPpSsRrCcNnVvIiQqXxGg``. ``Z`` is outside that set, so no
rtpproxy command can ever mean the same thing, and no client sends it. Only the exact,
case-sensitive grammar ``Zsessions [OFFSET [LIMIT]]`` (decimal numbers, no ``&&``) is
intercepted; anything else (``Z``, ``z``, ``Zx``, ``Zsessions foo``) goes through the
normal parser and gets ``E0`` exactly as from rtpproxy.

The reply is one line: a JSON object (no raw newlines inside) followed by ``\\n``. It
starts with ``{``, which no rtpproxy reply does, so a caller can tell it from ``E0``.
It is capped at :data:`MAX_REPLY_BYTES` so it always fits in one UDP datagram; the
``next`` field gives the offset of the following page (``null`` on the last one).
"""

from __future__ import annotations

import json
from typing import Any

from ..engine.addresses import Endpoint
from ..engine.handler import Engine
from ..engine.session import Leg, Session, Side
from ..protocol.parse import tokenize

COMMAND_WORD = b"Zsessions"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_REPLY_BYTES = 32 * 1024
FORMAT_VERSION = 1


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


def _leg(leg: Leg) -> dict[str, Any]:
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
        "ttl": max(0, leg.ttl),
    }


def describe(session: Session, engine: Engine, now: float) -> dict[str, Any]:
    """One session as a JSON-ready dict.

    Leg B receives the creating tag's party's media (the ``from`` party of the creating
    U), leg A the other party's (protocol.md §4). ``idle`` is derived from the timer:
    the full TTL minus what is left, so it has the sweeper's one-second resolution.
    """
    full = engine.config.ttl if session.complete else engine.config.setup_ttl
    ttl = max(0, session.ttl)
    return {
        "call_id": session.call_id.decode("latin-1"),
        "tag": session.tag.decode("latin-1"),
        "complete": session.complete,
        "age": round(max(0.0, now - session.created_at), 3),
        "ttl": ttl,
        "idle": max(0, full - ttl),
        "notify": session.notify_tag is not None,
        "from": _leg(session.legs[Side.B]),
        "to": _leg(session.legs[Side.A]),
    }


def sessions_reply(engine: Engine, offset: int, limit: int, now: float) -> bytes:
    """The reply body (no trailing newline) for ``Zsessions offset limit``."""
    sessions = list(engine.table)
    items: list[bytes] = []
    size = 0
    index = offset
    end = min(len(sessions), offset + limit)
    while index < end:
        item = json.dumps(describe(sessions[index], engine, now), separators=(",", ":"))
        encoded = item.encode("ascii")  # json.dumps escapes everything non-ASCII
        if items and size + len(encoded) > MAX_REPLY_BYTES - 256:
            break
        items.append(encoded)
        size += len(encoded) + 1
        index += 1
    header = {
        "v": FORMAT_VERSION,
        "total": len(sessions),
        "offset": offset,
        "next": index if index < len(sessions) else None,
        "ttl": engine.config.ttl,
        "setup_ttl": engine.config.setup_ttl,
    }
    head = json.dumps(header, separators=(",", ":")).encode("ascii")
    return head[:-1] + b',"sessions":[' + b",".join(items) + b"]}"
