"""``Zsessions`` replies built from real engine sessions (engine/queries.py): the exact
bytes are pinned."""

from __future__ import annotations

import hashlib
import json

import pytest

from engine.support import make_engine, run
from protocol.test_sessions_view import FIRST as FIRST_VIEW
from protocol.test_sessions_view import FIRST_BYTES as FIRST
from protocol.test_sessions_view import HEAD
from protocol.test_sessions_view import SECOND as SECOND_VIEW
from protocol.test_sessions_view import SECOND_BYTES as SECOND
from pyrtpproxy.engine import queries
from pyrtpproxy.engine.addresses import Endpoint, LocalAddress
from pyrtpproxy.engine.engine import Engine
from pyrtpproxy.engine.session import Side
from pyrtpproxy.engine.timers import Deadlines
from pyrtpproxy.protocol.commands import Introspect
from pyrtpproxy.protocol.sessions import SessionsPage, SessionView, decode_page

NOW = 12.3456


def two_sessions() -> Engine:
    """A complete, latched call with a non-ASCII call-id and an incomplete one on IPv6;
    with independent timers, so each leg shows its own."""
    engine = make_engine(ttl=60, setup_ttl=30, sequential=True, independent_timers=True)
    assert run(engine, b'U call-\xe9"1 198.51.100.7 4000 ft\\1', 0.0) == b"35000 127.0.0.1"
    assert run(engine, b'L call-\xe9"1 203.0.113.9 30000 ft\\1 tt', 1.0) == b"35002 127.0.0.1"
    assert run(engine, b"U c2 192.0.2.1 5000 t2", 2.0) == b"35004 127.0.0.1"
    first, second = list(engine.table)
    b = first.legs[Side.B]
    b.rtp.latched = True
    b.rtp.fast_count, b.rtp.accepted, b.rtp.relayed = 1500, 23, 20
    b.rtp.dropped, b.rtcp.dropped, b.rtp.ignored, b.rtcp.ignored = 2, 1, 4, 5
    b.rtcp.accepted = 3
    # at NOW: 60 s left for the caller's direction, 55 for the callee's
    b.expires_at = NOW + 60 + 1
    first.legs[Side.A].expires_at = NOW + 55 + 1
    first.legs[Side.A].local = LocalAddress("10.0.0.1", advertised="203.0.113.10")
    second.notify_tag = b"n"
    second.legs[Side.A].rtp.remote = Endpoint("2001:db8::7", 5000)
    second.legs[Side.A].asymmetric = True
    second.legs[Side.A].expires_at = NOW - 3  # already due: shown as 0
    second.legs[Side.B].expires_at = NOW + 30 + 1
    second.legs[Side.A].local = LocalAddress("")
    second.legs[Side.B].local = None
    return engine


def sessions_reply(engine: Engine, offset: int, limit: int, now: float) -> bytes:
    return queries.introspect(
        list(engine.table), engine.timers, Introspect(offset, limit), now
    ).body


def test_reply_bytes_are_pinned() -> None:
    engine = two_sessions()
    assert sessions_reply(engine, 0, 100, NOW) == (
        HEAD % (0, b"null") + FIRST + b"," + SECOND + b"]}"
    )
    assert sessions_reply(engine, 0, 1, NOW) == (HEAD % (0, b"1") + FIRST + b"]}")
    assert sessions_reply(engine, 1, 1, NOW) == (HEAD % (1, b"null") + SECOND + b"]}")
    for offset in (2, 5):
        assert sessions_reply(engine, offset, 100, NOW) == (HEAD % (offset, b"null") + b"]}")


def test_byte_cap_pages_are_pinned() -> None:
    engine = make_engine(ttl=60, sequential=True)
    for i in range(120):
        call_id = b"\xe9" * 40 + b"x" * 200 + str(i).encode()
        assert run(engine, b"U " + call_id + b" 192.0.2.1 5000 t", 1.0)[:1].isdigit()
    for session in engine.table:
        session.reset_timer(5.0, 60)  # a full timer when the page is taken, at 5.0
    expected = {
        0: (31721, 34, 34, "d09d030129226a042a31f4863f3d088ad783bbfcbf08fea657b132a04ea7e0cc"),
        50: (31732, 84, 34, "d0e689e322ef119f358707390cc3cd33b603ca2dab5710ec1f471deceed5d15b"),
        119: (1013, None, 1, "6e58db7ec25450fb2eb1fd13fb7fdf4fd7f25b7aac45b2bf55023f63e3321d76"),
    }
    for offset, (size, next_offset, count, digest) in expected.items():
        reply = sessions_reply(engine, offset, 1000, 5.0)
        page = json.loads(reply)
        assert (len(reply), page["next"], len(page["sessions"])) == (size, next_offset, count)
        assert hashlib.sha256(reply).hexdigest() == digest


def test_engine_sessions_become_the_views() -> None:
    engine = two_sessions()
    first, second = list(engine.table)
    assert queries.session_view(engine.timers, first, NOW) == FIRST_VIEW
    assert queries.session_view(engine.timers, second, NOW) == SECOND_VIEW
    assert decode_page(sessions_reply(engine, 0, 100, NOW)) == SessionsPage(
        version=1, total=2, offset=0, next_offset=None, ttl=60, setup_ttl=30,
        sessions=(FIRST_VIEW, SECOND_VIEW),
    )  # fmt: skip


def test_only_the_page_is_described(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(ttl=60, sequential=True)
    for i in range(30):
        assert run(engine, f"U many-{i} 192.0.2.1 5000 t".encode(), 1.0)[:1].isdigit()
    described: list[str] = []
    real = queries.session_view

    def counting(timers: Deadlines, session: object, now: float) -> SessionView:
        view = real(timers, session, now)  # type: ignore[arg-type]
        described.append(view.call_id)
        return view

    monkeypatch.setattr(queries, "session_view", counting)
    page = decode_page(sessions_reply(engine, 10, 5, 2.0))
    assert [s.call_id for s in page.sessions] == described == [f"many-{i}" for i in range(10, 15)]
    assert page.next_offset == 15


def test_the_listing_goes_through_the_command_path() -> None:
    engine = two_sessions()
    assert run(engine, b"Zsessions 1 1", NOW) == (HEAD % (1, b"null") + SECOND + b"]}")
