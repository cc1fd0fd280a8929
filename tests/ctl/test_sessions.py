"""ctl/sessions.py: paging through Zsessions over a socket, errors, and the table's text."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from protocol.test_sessions_view import EXPECTED, FIRST, SECOND
from pyrtpproxy.ctl.client import ControlClient, CtlError, NotSupported
from pyrtpproxy.ctl.sessions import (
    SessionList,
    fetch_sessions,
    format_session,
    render_sessions,
    sessions_json,
)
from pyrtpproxy.protocol.sessions import DEFAULT_LIMIT, SessionView, encode_reply

from .conftest import FakeRelay, FakeRelayFactory


def serving(views: list[SessionView], fake_relay: FakeRelayFactory) -> FakeRelay:
    """A relay that pages ``views`` as pyrtpproxy does (limit 100, byte cap)."""

    def answer(command: bytes) -> bytes:
        word, _, offset = command.partition(b" ")
        assert word == b"Zsessions"
        start = int(offset)
        return encode_reply(
            views[start:], total=len(views), offset=start, limit=DEFAULT_LIMIT, ttl=60,
            setup_ttl=30,
        )  # fmt: skip

    return fake_relay("udp", answer)


def numbered(count: int, call_id_length: int = 1) -> list[SessionView]:
    return [replace(FIRST, call_id=f"c{i}-" + "\xe9" * call_id_length) for i in range(count)]


@pytest.mark.parametrize(("count", "length"), [(0, 1), (1, 1), (250, 1), (40, 3000)])
def test_pages_until_next_is_null(fake_relay: FakeRelayFactory, count: int, length: int) -> None:
    views = numbered(count, length)
    relay = serving(views, fake_relay)
    with ControlClient(relay.spec) as client:
        listing = fetch_sessions(client)
    assert listing == SessionList(tuple(views), count, 60)
    pages = [data.partition(b" ")[2] for data in relay.received]
    assert pages[0] == b"Zsessions 0" and len(pages) == max(1, len(set(pages)))
    if length > 1:  # the byte cap, not the limit, made the pages
        assert len(pages) > 2


def test_stops_at_the_limit(fake_relay: FakeRelayFactory) -> None:
    relay = serving(numbered(250), fake_relay)
    with ControlClient(relay.spec) as client:
        listing = fetch_sessions(client, limit=30)
    assert [s.call_id for s in listing.sessions] == [f"c{i}-\xe9" for i in range(30)]
    assert listing.total == 250 and len(relay.received) == 1


def test_a_next_that_does_not_advance_ends_the_paging(fake_relay: FakeRelayFactory) -> None:
    stuck = EXPECTED.replace(b'"next":null', b'"next":0')
    relay = fake_relay("udp", lambda command: stuck)
    with ControlClient(relay.spec) as client:
        assert fetch_sessions(client).sessions == (FIRST, SECOND)
    assert len(relay.received) == 1


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (b"E0", NotSupported, "does not support session listing"),
        (b"E8", CtlError, "unexpected reply to Zsessions: 'E8'"),
        (b"{", CtlError, "Zsessions reply is not JSON"),
        (b'{"v":1,"total":1}', CtlError, "Zsessions reply: missing 'offset'"),
        (EXPECTED.replace(b'"port":0', b'"port":"0"'), CtlError, "sessions[1].from.port"),
        (EXPECTED.replace(b'"v":1', b'"v":2'), CtlError, "format version 2"),
    ],
)
def test_bad_replies(
    fake_relay: FakeRelayFactory, reply: bytes, error: type[CtlError], message: str
) -> None:
    relay = fake_relay("cunix", lambda command: reply)
    with ControlClient(relay.spec) as client, pytest.raises(error) as caught:
        fetch_sessions(client)
    assert message in str(caught.value)


HEADER = (
    "CALL-ID                  TAG          PORTS       FROM PARTY             TO PARTY      "
    "            PKTS>    PKTS<  IDLE"
)
FIRST_ROW = (
    'call-é"1                 ft\\1         35002/35000 198.51.100.7:4000      '
    "203.0.113.9:30000?         1523        0    5s"
)
SECOND_ROW = (
    "c2                       t2           0/35004     192.0.2.1:5000?        "
    "[2001:db8::7]:5000?           0        0   30s"
)


def test_the_table_is_unchanged() -> None:
    assert render_sessions(SessionList((FIRST, SECOND), 2, 60)) == [
        HEADER,
        FIRST_ROW,
        SECOND_ROW,
        "2 session(s). PORTS: from-party's/to-party's relay port; PKTS>: RTP from the "
        "from-party, PKTS<: from the to-party; '?' = not latched yet.",
    ]
    assert format_session(FIRST, (12.4, 0.5)) == (
        'call-é"1                 ft\\1         35002/35000 198.51.100.7:4000      '
        "203.0.113.9:30000?         12/s      0/s    5s"
    )


def test_long_and_missing_values_are_cut_and_dashed() -> None:
    long = replace(
        FIRST,
        call_id="x" * 30,
        tag="t" * 13,
        from_leg=replace(FIRST.from_leg, remote=None),
        to_leg=replace(FIRST.to_leg, remote="[2001:db8:1:2:3:4:5:6]:65535", latched=True),
    )
    row = format_session(long).split()
    assert row[:5] == ["x" * 23 + "~", "t" * 11 + "~", "35002/35000", "-", "[2001:db8:1:2:3:4:5:6~"]


def test_json_output_is_the_relays_objects() -> None:
    text = sessions_json(SessionList((FIRST, SECOND), 2, 60))
    assert text == json.dumps(json.loads(EXPECTED)["sessions"], indent=1)
    assert text.startswith('[\n {\n  "call_id": "call-\\u00e9\\"1",\n  "tag": "ft\\\\1",')
