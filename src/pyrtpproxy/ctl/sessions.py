"""Fetching the ``Zsessions`` listing page by page, and the ``sessions`` table.

Replies are decoded into :mod:`pyrtpproxy.protocol.sessions` views, the module the relay
encodes them with, so the two ends cannot disagree on a key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..protocol.sessions import (
    COMMAND_WORD,
    LegView,
    SessionsFormatError,
    SessionView,
    decode_page,
    session_to_json,
)
from .client import ControlClient, CtlError, NotSupported

SESSIONS_WORD = COMMAND_WORD.decode("ascii")
MAX_SESSIONS = 100_000  # stop paging after this many (a bound, not a real limit)


@dataclass(frozen=True, slots=True)
class SessionList:
    """Every live session the relay reported, plus its timer settings."""

    sessions: tuple[SessionView, ...]
    total: int
    ttl: int


def fetch_sessions(client: ControlClient, limit: int = MAX_SESSIONS) -> SessionList:
    """Page through ``Zsessions`` until the relay says there is no more (or ``limit``)."""
    sessions: list[SessionView] = []
    offset: int | None = 0
    total, ttl = 0, 0
    pages = 0
    while offset is not None and len(sessions) < limit and pages < limit:
        reply = client.request(f"{SESSIONS_WORD} {offset}")
        pages += 1
        if not reply.startswith("{"):
            if reply.strip() == "E0":
                raise NotSupported("the relay does not support session listing (E0)")
            raise CtlError(f"unexpected reply to {SESSIONS_WORD}: {reply[:80]!r}")
        try:
            page = decode_page(reply)
        except SessionsFormatError as exc:
            raise CtlError(str(exc)) from None
        sessions.extend(page.sessions)
        total, ttl = page.total, page.ttl
        following = page.next_offset
        # a relay whose next does not move forward would be paged for ever
        offset = following if following is not None and following > offset else None
    return SessionList(tuple(sessions[:limit]), total, ttl)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _party(leg: LegView) -> str:
    if not leg.remote:
        return "-"
    return leg.remote + ("" if leg.latched else "?")


SESSION_HEADER = (
    f"{'CALL-ID':<24} {'TAG':<12} {'PORTS':<11} {'FROM PARTY':<22} {'TO PARTY':<22} "
    f"{'PKTS>':>8} {'PKTS<':>8} {'IDLE':>5}"
)


def format_session(item: SessionView, rates: tuple[float, float] | None = None) -> str:
    """One line: call-id, tag, our ports, latched addresses, packets each way, idle."""
    frm, to = item.from_leg, item.to_leg
    ports = f"{frm.port}/{to.port}"
    if rates is None:
        out, back = str(frm.rtp_in), str(to.rtp_in)
    else:
        out, back = f"{rates[0]:.0f}/s", f"{rates[1]:.0f}/s"
    return (
        f"{_cut(item.call_id, 24):<24} {_cut(item.tag, 12):<12} {ports:<11} "
        f"{_cut(_party(frm), 22):<22} {_cut(_party(to), 22):<22} "
        f"{out:>8} {back:>8} {item.idle:>4}s"
    )


def render_sessions(listing: SessionList) -> list[str]:
    """The ``sessions`` table."""
    lines = [SESSION_HEADER]
    lines.extend(format_session(item) for item in listing.sessions)
    lines.append(
        f"{listing.total} session(s). PORTS: from-party's/to-party's relay port; "
        "PKTS>: RTP from the from-party, PKTS<: from the to-party; '?' = not latched yet."
    )
    return lines


def sessions_json(listing: SessionList) -> str:
    """``sessions --json``: the sessions as the relay sent them, indented."""
    return json.dumps([session_to_json(item) for item in listing.sessions], indent=1)
