"""protocol/sessions.py: the typed Zsessions view, its exact wire bytes, paging and decoding."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrtpproxy.protocol.sessions import (
    FORMAT_VERSION,
    HEADER_ROOM,
    MAX_REPLY_BYTES,
    LegView,
    SessionsFormatError,
    SessionsPage,
    SessionView,
    decode_page,
    encode_page,
    encode_reply,
    session_to_json,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the fixed example: these bytes were produced by the pre-view introspect.py -----------

FROM_1 = LegView(
    side="B", local="127.0.0.1", port=35002, remote="198.51.100.7:4000", latched=True,
    asymmetric=False, rtp_in=1523, rtp_relayed=1520, rtcp_in=3,
    rtcp_remote="198.51.100.7:4001", dropped=3, ignored=9, ttl=60,
)  # fmt: skip
TO_1 = LegView(
    side="A", local="203.0.113.10", port=35000, remote="203.0.113.9:30000", latched=False,
    asymmetric=False, rtp_in=0, rtp_relayed=0, rtcp_in=0, rtcp_remote="203.0.113.9:30001",
    dropped=0, ignored=0, ttl=55,
)  # fmt: skip
FIRST = SessionView(
    call_id='call-\xe9"1', tag="ft\\1", complete=True, age=12.346, ttl=55, idle=5,
    notify=False, from_leg=FROM_1, to_leg=TO_1,
)  # fmt: skip
SECOND = SessionView(
    call_id="c2", tag="t2", complete=False, age=10.346, ttl=0, idle=30, notify=True,
    from_leg=LegView(
        side="B", local=None, port=0, remote="192.0.2.1:5000", latched=False, asymmetric=False,
        rtp_in=0, rtp_relayed=0, rtcp_in=0, rtcp_remote="192.0.2.1:5001", dropped=0,
        ignored=0, ttl=30,
    ),
    to_leg=LegView(
        side="A", local="*", port=35004, remote="[2001:db8::7]:5000", latched=False,
        asymmetric=True, rtp_in=0, rtp_relayed=0, rtcp_in=0, rtcp_remote=None, dropped=0,
        ignored=0, ttl=0,
    ),
)  # fmt: skip

HEAD = b'{"v":1,"total":2,"offset":%d,"next":%s,"ttl":60,"setup_ttl":30,"sessions":['
FIRST_BYTES = (
    b'{"call_id":"call-\\u00e9\\"1","tag":"ft\\\\1","complete":true,"age":12.346,"ttl":55,'
    b'"idle":5,"notify":false,"from":{"side":"B","local":"127.0.0.1","port":35002,'
    b'"remote":"198.51.100.7:4000","latched":true,"asymmetric":false,"rtp_in":1523,'
    b'"rtp_relayed":1520,"rtcp_in":3,"rtcp_remote":"198.51.100.7:4001","dropped":3,'
    b'"ignored":9,"ttl":60},"to":{"side":"A","local":"203.0.113.10","port":35000,'
    b'"remote":"203.0.113.9:30000","latched":false,"asymmetric":false,"rtp_in":0,'
    b'"rtp_relayed":0,"rtcp_in":0,"rtcp_remote":"203.0.113.9:30001","dropped":0,"ignored":0,'
    b'"ttl":55}}'
)
SECOND_BYTES = (
    b'{"call_id":"c2","tag":"t2","complete":false,"age":10.346,"ttl":0,"idle":30,"notify":true,'
    b'"from":{"side":"B","local":null,"port":0,"remote":"192.0.2.1:5000","latched":false,'
    b'"asymmetric":false,"rtp_in":0,"rtp_relayed":0,"rtcp_in":0,"rtcp_remote":"192.0.2.1:5001",'
    b'"dropped":0,"ignored":0,"ttl":30},"to":{"side":"A","local":"*","port":35004,'
    b'"remote":"[2001:db8::7]:5000","latched":false,"asymmetric":true,"rtp_in":0,'
    b'"rtp_relayed":0,"rtcp_in":0,"rtcp_remote":null,"dropped":0,"ignored":0,"ttl":0}}'
)
EXPECTED = HEAD % (0, b"null") + FIRST_BYTES + b"," + SECOND_BYTES + b"]}"
EXPECTED_PAGE = SessionsPage(
    version=1, total=2, offset=0, next_offset=None, ttl=60, setup_ttl=30, sessions=(FIRST, SECOND)
)


def reply(sessions: Iterable[SessionView], total: int, offset: int = 0, limit: int = 100) -> bytes:
    return encode_reply(sessions, total=total, offset=offset, limit=limit, ttl=60, setup_ttl=30)


def test_todays_reply_bytes_are_unchanged() -> None:
    assert reply([FIRST, SECOND], total=2) == EXPECTED
    assert encode_page(EXPECTED_PAGE) == EXPECTED
    assert reply([FIRST], total=2, limit=1) == HEAD % (0, b"1") + FIRST_BYTES + b"]}"
    assert reply([SECOND], total=2, offset=1) == HEAD % (1, b"null") + SECOND_BYTES + b"]}"
    assert reply([], total=2, offset=5) == HEAD % (5, b"null") + b"]}"


def test_todays_reply_decodes_to_the_views() -> None:
    assert decode_page(EXPECTED) == EXPECTED_PAGE
    assert decode_page(EXPECTED.decode("ascii") + "\n") == EXPECTED_PAGE
    assert decode_page(EXPECTED).sessions[0].call_id == 'call-\xe9"1'


def test_json_objects_use_the_wire_keys() -> None:
    item = session_to_json(FIRST)
    assert list(item) == [
        "call_id", "tag", "complete", "age", "ttl", "idle", "notify", "from", "to",
    ]  # fmt: skip
    assert list(item["from"]) == [
        "side", "local", "port", "remote", "latched", "asymmetric", "rtp_in", "rtp_relayed",
        "rtcp_in", "rtcp_remote", "dropped", "ignored", "ttl",
    ]  # fmt: skip
    assert item["to"]["local"] == "203.0.113.10"


# --- strategies -----------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=2**53)
small = st.integers(min_value=0, max_value=86_400)
latin1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
# Repeating a short text reaches the byte cap without generating megabytes of randomness.
long_latin1 = st.builds(lambda text, times: text * times, latin1, st.integers(1, 120))
endpoints = st.none() | st.text(max_size=50)

legs = st.builds(
    LegView,
    side=st.sampled_from(["A", "B"]),
    local=endpoints,
    port=st.integers(0, 65535),
    remote=endpoints,
    latched=st.booleans(),
    asymmetric=st.booleans(),
    rtp_in=counts,
    rtp_relayed=counts,
    rtcp_in=counts,
    rtcp_remote=endpoints,
    dropped=counts,
    ignored=counts,
    ttl=small,
)
session_views = st.builds(
    SessionView,
    call_id=long_latin1,
    tag=latin1,
    complete=st.booleans(),
    age=st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
    ttl=small,
    idle=small,
    notify=st.booleans(),
    from_leg=legs,
    to_leg=legs,
)
pages = st.builds(
    SessionsPage,
    version=st.just(FORMAT_VERSION),
    total=counts,
    offset=counts,
    next_offset=st.none() | counts,
    ttl=small,
    setup_ttl=small,
    sessions=st.lists(session_views, max_size=4).map(tuple),
)


def encoded_size(view: SessionView) -> int:
    return len(json.dumps(session_to_json(view), separators=(",", ":")))


@SETTINGS
@given(pages)
def test_encode_decode_round_trip(page: SessionsPage) -> None:
    body = encode_page(page)
    assert body.isascii() and b"\n" not in body
    assert decode_page(body) == page
    assert encode_page(decode_page(body)) == body


# ~12 KB escaped each: a few of them always reach the cap
big_views = session_views.map(lambda v: replace(v, call_id=v.call_id + "\xe9" * 2000))


@SETTINGS
@given(
    views=st.lists(session_views, max_size=40) | st.lists(big_views, min_size=3, max_size=12),
    offset=st.integers(0, 1000),
    limit=st.integers(1, 1000),
    extra=st.integers(0, 5),
)
def test_paging_cap_and_next(views: list[SessionView], offset: int, limit: int, extra: int) -> None:
    total = offset + len(views) + extra  # sessions past the ones given do exist
    consumed = 0

    def lazily() -> Iterator[SessionView]:
        nonlocal consumed
        for view in views:
            consumed += 1
            yield view

    body = reply(lazily(), total=total, offset=offset, limit=limit)
    page = decode_page(body)
    n = len(page.sessions)
    assert page.sessions == tuple(views[:n])
    assert (page.total, page.offset) == (total, offset)
    assert n <= limit
    if views:
        assert n >= 1  # paging always progresses
    if n > 1:
        assert len(body) <= MAX_REPLY_BYTES
    if n < min(limit, len(views)):  # stopped by the cap: the next one did not fit
        assert sum(encoded_size(v) + 1 for v in views[: n + 1]) > MAX_REPLY_BYTES - HEADER_ROOM + 1
    assert consumed <= min(limit, len(views), n + 1)
    assert page.next_offset == (offset + n if offset + n < total else None)
    assert encode_page(page) == body


# --- malformed replies ----------------------------------------------------------------


def wire() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(EXPECTED)
    return document


def mutated(change: Any) -> bytes:
    document = wire()
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not JSON"),
        (b"E0", "not JSON"),
        (b"{", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"v":2,"sessions":"later"}', "format version 2"),
        (b'{"v":"1"}', "v: expected an integer"),
        (EXPECTED.replace(b'"total":2', b'"total":NaN'), "NaN is not a number"),
        (EXPECTED.replace(b'"age":12.346', b'"age":1e999'), "age: expected a finite number"),
        (mutated(lambda d: d.pop("total")), "missing 'total'"),
        (mutated(lambda d: d.update(sessions={})), "sessions: expected a JSON array"),
        (mutated(lambda d: d.update(next="5")), "next: expected an integer"),
        (mutated(lambda d: d["sessions"].append(7)), "sessions[2]: expected a JSON object"),
        (mutated(lambda d: d["sessions"][1].pop("to")), "sessions[1]: missing 'to'"),
        (mutated(lambda d: d["sessions"][0].update(tag=5)), "sessions[0].tag: expected a string"),
        (
            mutated(lambda d: d["sessions"][0].update(complete=1)),
            "sessions[0].complete: expected true or false",
        ),
        (
            mutated(lambda d: d["sessions"][0]["from"].update(port=True)),
            "sessions[0].from.port: expected an integer",
        ),
        (
            mutated(lambda d: d["sessions"][0]["from"].update(side="C")),
            "sessions[0].from.side: expected 'A' or 'B'",
        ),
        (
            mutated(lambda d: d["sessions"][0]["to"].update(remote=None, local=[])),
            "sessions[0].to.local: expected a string",
        ),
        (mutated(lambda d: d["sessions"][0].update(to=None)), "sessions[0].to: expected a JSON"),
    ],
)
def test_malformed_replies_are_rejected_clearly(body: bytes, message: str) -> None:
    with pytest.raises(SessionsFormatError, match=r"^Zsessions reply") as caught:
        decode_page(body)
    assert message in str(caught.value)


def test_unknown_keys_are_later_additions() -> None:
    def add(document: dict[str, Any]) -> None:
        document["uptime"] = 5
        document["sessions"][0]["codec"] = "PCMU"
        document["sessions"][0]["from"]["jitter"] = 0.5

    assert decode_page(mutated(add)) == EXPECTED_PAGE


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@SETTINGS
@given(json_values)
def test_any_json_is_a_page_or_a_format_error(value: object) -> None:
    try:
        page = decode_page(json.dumps(value))
    except SessionsFormatError:
        return
    assert isinstance(page, SessionsPage)


@SETTINGS
@given(st.data())
def test_a_wrong_field_anywhere_is_rejected(data: st.DataObject) -> None:
    document = wire()
    target: dict[str, Any] = data.draw(
        st.sampled_from(
            [document, *document["sessions"]]
            + [s[side] for s in document["sessions"] for side in ("from", "to")]
        )
    )
    key = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        del target[key]
    else:
        # a list is valid for no field (only "sessions" is an array, and not of lists)
        target[key] = [[]] if key == "sessions" else []
    with pytest.raises(SessionsFormatError):
        decode_page(json.dumps(document))


def test_views_are_frozen_values() -> None:
    with pytest.raises(AttributeError):
        FIRST.tag = "x"  # type: ignore[misc]
    assert replace(FIRST, tag="x") != FIRST and replace(FIRST, tag="ft\\1") == FIRST
