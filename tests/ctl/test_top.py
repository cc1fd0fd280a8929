"""ctl/top.py: rates between frames, ordering, the height limit, and a run against a socket."""

from __future__ import annotations

from dataclasses import replace

import pytest

from protocol.test_sessions_view import EXPECTED, FIRST, SECOND
from pyrtpproxy.ctl.client import ControlClient
from pyrtpproxy.ctl.sessions import SESSION_HEADER, SessionList
from pyrtpproxy.ctl.top import TopView, run_top

from .conftest import FakeRelayFactory

FIRST_AT_0 = (
    'call-é"1                 ft\\1         35002/35000 198.51.100.7:4000      '
    "203.0.113.9:30000?          0/s      0/s    5s"
)
SECOND_AT_0 = (
    "c2                       t2           0/35004     192.0.2.1:5000?        "
    "[2001:db8::7]:5000?         0/s      0/s   30s"
)


def later() -> SessionList:
    """Two seconds on: the first party sent 100 packets and got 10, the second got 400."""
    first = replace(
        FIRST,
        from_leg=replace(FIRST.from_leg, rtp_in=FIRST.from_leg.rtp_in + 100),
        to_leg=replace(FIRST.to_leg, rtp_in=10),
    )
    second = replace(SECOND, to_leg=replace(SECOND.to_leg, rtp_in=400))
    return SessionList((first, second), 2, 60)


def test_rates_come_from_two_frames() -> None:
    view = TopView()
    first = view.frame(SessionList((FIRST, SECOND), 2, 60), {"nsess_created": 5}, 40, now=100.0)
    assert first[0].startswith("pyrtpproxy top - ")
    assert first[0].endswith("   sessions: 2   created: 5   timed out: 0")
    assert first[1:] == [
        "packets/s  received: -   relayed: -   discarded: -        (q or Ctrl-C quits)",
        "",
        SESSION_HEADER,
        FIRST_AT_0,
        SECOND_AT_0,
    ]
    counters = {"nsess_created": 6, "npkts_rcvd": 700, "npkts_relayed": 10}
    second = view.frame(later(), counters, 40, now=102.0)
    assert second[1:] == [
        "packets/s  received: -   relayed: -   discarded: -        (q or Ctrl-C quits)",
        "",
        SESSION_HEADER,
        "c2                       t2           0/35004     192.0.2.1:5000?        "
        "[2001:db8::7]:5000?         0/s    200/s   30s",  # busiest first
        'call-é"1                 ft\\1         35002/35000 198.51.100.7:4000      '
        "203.0.113.9:30000?         50/s      5/s    5s",
    ]
    third = view.frame(later(), {**counters, "npkts_rcvd": 1300}, 40, now=104.0)
    assert third[1].startswith("packets/s  received: 300   relayed: 0   discarded: -")


def test_a_short_screen_says_how_many_more() -> None:
    lines = TopView().frame(SessionList((FIRST, SECOND), 2, 60), {}, 6, now=1.0)
    assert lines[3:] == [SESSION_HEADER, FIRST_AT_0, "... 1 more"]


def test_run_top_prints_frames(
    fake_relay: FakeRelayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    def answer(command: bytes) -> bytes:
        if command.startswith(b"Zsessions"):
            return EXPECTED
        assert command == b"Gv nsess_created nsess_timeout npkts_rcvd npkts_relayed npkts_discard"
        return b"nsess_created=3 nsess_timeout=1 npkts_rcvd=9 npkts_relayed=x npkts_discard=0"

    relay = fake_relay("cunix", answer)
    with ControlClient(relay.spec) as client:
        run_top(client, interval=0.2, iterations=2, limit=10)
    out = capsys.readouterr().out
    assert out.count("pyrtpproxy top - ") == 2
    assert "sessions: 2   created: 3   timed out: 1" in out
    assert out.count(FIRST_AT_0) == 2 and out.endswith("\n\n")
