"""The one command path every transport uses, without sockets and on a fake clock:
framing, the UDP cookie and reply cache, error replies, counting, events, the
rate-limited bad-command log."""

from __future__ import annotations

import logging

import pytest

from engine.support import FakeClock, FakeHost, make_engine
from pyrtpproxy.control import processor
from pyrtpproxy.control.processor import COOKIE_TTL, CommandProcessor, RateLimitedLog
from pyrtpproxy.engine.engine import LOCAL_REQUEST, Engine
from pyrtpproxy.engine.events import (
    EndReason,
    Event,
    LegClosed,
    LegOpened,
    SessionCompleted,
    SessionCreated,
    SessionEnded,
    StreamChanged,
)
from pyrtpproxy.protocol.commands import Delete


class Recorder:
    """A processor over a fresh engine that keeps every event and observation."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine or make_engine(port_min=40000, port_max=40010)
        self.clock = FakeClock(100.0)
        self.events: list[Event] = []
        self.observed: list[tuple[str, bool]] = []
        self.refreshes = 0
        self.processor = CommandProcessor(
            self.engine,
            self.clock,
            on_events=self.events.extend,
            observe=lambda kind, ok, seconds: self.observed.append((kind, ok)),
            refresh=self._refresh,
        )

    def _refresh(self) -> None:
        self.refreshes += 1

    def line(self, data: bytes) -> bytes:
        return self.processor.handle(data, LOCAL_REQUEST)

    def datagram(self, data: bytes) -> bytes:
        return self.processor.handle_datagram(data, LOCAL_REQUEST)

    def g(self, *names: str) -> list[int]:
        reply = self.line(b"G " + " ".join(names).encode())
        return [int(float(v)) for v in reply.split()]


def test_a_stream_reply_is_one_line() -> None:
    r = Recorder()
    assert r.line(b"V") == b"20040107\n"
    assert r.line(b"I").endswith(b"\n") and r.line(b"I").count(b"\n") == 5
    assert r.line(b"Agarbage") == b"E0\n"
    assert r.line(b"") == b"E5\n"


def test_a_datagram_reply_echoes_the_cookie() -> None:
    r = Recorder()
    assert r.datagram(b"k1 V") == b"k1 20040107\n"
    assert r.datagram(b"k2 D nosuch a") == b"k2 E50\n"
    assert r.datagram(b"k3") == b"k3 E5\n"  # a cookie with no command
    assert r.datagram(b"") == b"E5\n"


def test_retransmissions_get_the_cached_reply_until_it_expires() -> None:
    r = Recorder()
    first = r.datagram(b"abc U c 127.0.0.1 5000 ft")
    assert first.startswith(b"abc 400")
    r.clock.now += COOKIE_TTL - 1
    assert r.datagram(b"abc U c 127.0.0.1 5000 ft") == first  # not executed again
    # the G itself is received but not yet replied
    assert r.g("ncmds_rcvd", "ncmds_rcvd_ndups", "ncmds_repld") == [2, 1, 2]
    assert [type(e) for e in r.events].count(SessionCreated) == 1
    r.clock.now += 2
    again = r.datagram(b"abc U c 127.0.0.1 5000 ft")  # expired: executed (an update now)
    assert again == first
    assert r.g("ncmds_rcvd_ndups") == [1]


def test_a_flood_of_fresh_cookies_keeps_the_cache_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor, "MAX_CACHED_REPLIES", 50)
    r = Recorder()
    first = r.datagram(b"c0 V")
    for n in range(1, 200):
        assert r.datagram(b"c%d V" % n) == b"c%d 20040107\n" % n
    assert r.datagram(b"c199 G ncmds_rcvd_ndups") == b"c199 20040107\n"  # the newest: cached
    assert first == r.datagram(b"c0 V")  # the oldest was dropped: executed again
    assert r.g("ncmds_rcvd_ndups") == [1]


def test_commands_are_counted_by_result() -> None:
    r = Recorder()
    r.line(b"U c 127.0.0.1 5000 ft")
    r.line(b"L nosuch 127.0.0.1 5000 ft tt")  # "0", but a failure
    r.line(b"Q c ft tt bogus_counter")
    r.datagram(b"")
    # the datagram without a cookie is received and failed but, like rtpproxy, not "replied"
    assert r.g("ncmds_rcvd", "ncmds_succd", "ncmds_errs", "ncmds_repld") == [5, 1, 3, 3]
    assert r.observed[:3] == [("Update", True), ("Update", False), ("Query", False)]


LIFECYCLE = (LegOpened, LegClosed, SessionCreated, SessionCompleted, SessionEnded)


def _lifecycle(events: list[Event]) -> list[type[Event]]:
    return [type(e) for e in events if isinstance(e, LIFECYCLE)]


def test_events_reach_the_shell_after_each_command() -> None:
    r = Recorder()
    r.line(b"U c 127.0.0.1 5000 ft")
    assert _lifecycle(r.events) == [LegOpened, SessionCreated]
    # the caller's SDP address went to leg B, which has no port (no sockets) yet
    assert not any(isinstance(e, StreamChanged) for e in r.events)
    r.events.clear()
    r.line(b"L c 127.0.0.1 5002 ft tt")
    assert _lifecycle(r.events) == [LegOpened, SessionCompleted]
    assert any(isinstance(e, StreamChanged) for e in r.events)  # the callee's, on leg A
    r.events.clear()
    r.line(b"D c ft")
    assert _lifecycle(r.events) == [LegClosed, LegClosed, SessionEnded]


def test_a_failed_creation_is_an_event_and_leaves_nothing_behind() -> None:
    host = FakeHost()
    r = Recorder(make_engine(port_min=40000, port_max=40001, host=host))  # one port pair
    assert r.line(b"U c 127.0.0.1 5000 ft").startswith(b"40000")
    r.events.clear()
    assert r.line(b"U d 127.0.0.1 5000 ft") == b"E72\n"
    ended = [e for e in r.events if isinstance(e, SessionEnded)]
    assert [e.reason for e in ended] == [EndReason.FAILED]
    assert len(r.engine.table) == 1
    assert r.engine.counters.relay.sessions_failed == 1
    assert r.g("nsess_created", "nsess_destroyed") == [1, 0]
    # a failing sub-command does not undo the U that created the session
    r.line(b"D c ft")
    r.events.clear()
    assert r.line(b"U e 127.0.0.1 5000 ft tt && L 127.0.0.1 6000") == b"40000 127.0.0.1 && -71\n"
    assert _lifecycle(r.events) == [LegOpened, SessionCreated]


def test_counters_are_refreshed_only_for_commands_that_read_them() -> None:
    r = Recorder()
    r.line(b"U c 127.0.0.1 5000 ft")
    r.line(b"V")
    r.line(b"D c ft")
    assert r.refreshes == 0
    for command in (b"G nsess_created", b"I", b"Q c ft", b"Zsessions"):
        r.line(command)
    assert r.refreshes == 4


def test_a_bug_costs_one_command(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Recorder()

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(r.engine, "_delete", broken)
    assert r.line(b"D c ft") == b"E89\n"
    assert r.line(b"V") == b"20040107\n"
    assert r.observed[0] == ("Delete", False)
    assert isinstance(Delete(b"c", b"ft"), Delete)


def test_bad_command_flood_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    r = Recorder()
    caplog.set_level(logging.DEBUG, logger="pyrtpproxy.control")
    for i in range(2000):
        assert r.line(b"Zbad %d" % i) == b"E0\n"
    lines = [rec for rec in caplog.records if rec.name == "pyrtpproxy.control"]
    assert len(lines) == 20  # one window's burst; the clock did not move
    r.clock.now += 10.0
    r.line(b"Zbad again")
    messages = [rec.getMessage() for rec in caplog.records if rec.name == "pyrtpproxy.control"]
    assert "1980 more bad commands not logged" in messages


def test_rate_limit_summarises_suppressed_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = RateLimitedLog(clock, burst=3, period=0.2)
    caplog.set_level(logging.WARNING, logger="pyrtpproxy.control")
    for _ in range(50):
        limiter.warning("bad %s", "x")
    clock.now += 0.25
    limiter.warning("bad %s", "y")
    messages = [rec.getMessage() for rec in caplog.records]
    assert messages[:3] == ["bad x"] * 3
    assert "47 more bad commands not logged" in messages
    assert messages[-1] == "bad y" and len(messages) == 5
