"""Property tests of the parser and of the shape of every reply the engine gives."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.support import expire, make_engine, run, run_udp
from pyrtpproxy.engine.addresses import AddressPlan, LocalAddress
from pyrtpproxy.protocol.commands import (
    AddressSpec,
    Delete,
    DeleteAll,
    GetCounters,
    Info,
    Interface,
    Introspect,
    Query,
    Update,
    UpdateModifiers,
    Version,
    VersionFeature,
)
from pyrtpproxy.protocol.errors import ErrorCode, ProtocolError
from pyrtpproxy.protocol.parse import (
    MODIFIER_CACHE,
    parse,
    parse_update_modifiers,
    split_cookie,
    tokenize,
    url_decode,
)
from pyrtpproxy.protocol.sessions import decode_page

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEPARATORS = b" \t\r\n"

# --- arbitrary input ------------------------------------------------------------------

command_like = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    b"U",
                    b"L",
                    b"D",
                    b"Q",
                    b"G",
                    b"V",
                    b"VF",
                    b"I",
                    b"X",
                    b"P",
                    b"S",
                    b"R",
                    b"N",
                    b"C",
                    b"&&",
                    b"Uz",
                    b"Ul[",
                    b"Ur{x}",
                    b"Uc",
                    b"%",
                    b"%2",
                    b"\0",
                    b"Dw",
                    b"Qv",
                    b"Gv",
                    b"Na",
                    b"Rs",
                    b"Cp",
                    b"P9" * 3000,
                    b"Uz" + b"1" * 5000,
                    b"127.0.0.1",
                    b"::1",
                    b"0.0.0.0",
                    b"9" * 5000,
                    b"1.2.3.456",
                ]
            ),
            st.binary(min_size=1, max_size=12),
        ),
        max_size=30,
    ).map(b" ".join),
)


@SETTINGS
@given(command_like, st.booleans())
def test_parse_raises_only_protocol_errors(data: bytes, bridge: bool) -> None:
    try:
        parse(data, bridge_mode=bridge)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
    cookie, rest = split_cookie(data)
    assert cookie is None or (cookie and not any(c in SEPARATORS for c in cookie))
    with contextlib.suppress(ProtocolError):
        parse(rest, bridge_mode=bridge)


COOKIE_PIECES = [b"k1", b" ", b"\t", b"\r\n", b"\x0b", b"\x0c", b"\0", b"V"]


@SETTINGS
@given(st.lists(st.sampled_from(COOKIE_PIECES)).map(b"".join))
def test_split_cookie_splits_at_the_first_run_of_separators(data: bytes) -> None:
    stripped = data.lstrip(SEPARATORS)
    run = re.search(b"[" + SEPARATORS + b"]+", stripped)
    if run is None:  # a cookie alone (trailing NULs are padding): no command
        expected = (stripped.rstrip(b"\0" + SEPARATORS) or None, b"")
    else:  # vertical tab and form feed belong to the cookie or the command
        expected = (stripped[: run.start()], stripped[run.end() :])
    assert split_cookie(data) == expected


@SETTINGS
@given(st.binary(max_size=200))
def test_tokenize_drops_separators(data: bytes) -> None:
    tokens = tokenize(data)
    assert all(t and not any(c in SEPARATORS for c in t) for t in tokens)
    assert b"".join(tokens) == bytes(c for c in data.rstrip(b"\0 \t\r\n") if c not in SEPARATORS)


def test_vertical_tab_and_form_feed_stay_inside_tokens() -> None:
    assert tokenize(b"U\x0bx c\x0c1 \x0b") == [b"U\x0bx", b"c\x0c1", b"\x0b"]


@SETTINGS
@given(st.binary(max_size=12), st.booleans())
def test_modifiers_parse_the_same_every_time(mods: bytes, bridge: bool) -> None:
    """U/L modifiers are remembered once parsed: the remembered value is the one a
    fresh parse gives, and a bad string fails with the same code every time."""
    outcomes = []
    for _ in range(2):
        try:
            outcomes.append(parse_update_modifiers(mods, bridge))
        except ProtocolError as exc:
            outcomes.append(exc.code)
    for other in range(MODIFIER_CACHE + 1):  # the memory is bounded: it starts again
        with contextlib.suppress(ProtocolError):
            parse_update_modifiers(b"z%d" % (other + 1), bridge)
    try:
        outcomes.append(parse_update_modifiers(mods, bridge))
    except ProtocolError as exc:
        outcomes.append(exc.code)
    assert outcomes[0] == outcomes[1] == outcomes[2]


@SETTINGS
@given(st.binary(max_size=60))
def test_url_decode_round_trip(raw: bytes) -> None:
    encoded = b"".join(b"%%%02X" % c if c in b"% " or c > 0x7E else bytes([c]) for c in raw)
    assert url_decode(encoded) == raw
    assert url_decode(b"".join(b"%%%02x" % c for c in raw)) == raw


# --- well-formed commands round-trip -------------------------------------------------

_token_bytes = [c for c in range(1, 256) if c not in SEPARATORS]
token = (
    st.binary(min_size=1, max_size=16)
    .map(lambda b: bytes(_token_bytes[c % len(_token_bytes)] for c in b))
    .filter(lambda t: t != b"&&")
)


@st.composite
def case(draw: st.DrawFn, letters: str) -> bytes:
    """Letters with random case."""
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in letters).encode()


@dataclass(frozen=True)
class Built:
    data: bytes
    bridge: bool
    expected: object


ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))


@st.composite
def update_modifiers(draw: st.DrawFn, bridge: bool) -> tuple[bytes, UpdateModifiers]:
    parts: list[bytes] = []
    asymmetric: bool | None = None
    ipv6 = draw(st.booleans())
    if ipv6:
        parts.append(b"6")  # first: a digit after an address or number would join it
    for _ in range(draw(st.integers(0, 2))):
        flag = draw(st.sampled_from(["a", "s"]))
        parts.append(draw(case(flag)))
        asymmetric = flag == "a"
    weak = draw(st.booleans())
    if weak:
        parts.append(draw(case("w")))
    new_port = draw(st.booleans())
    if new_port:
        parts.append(draw(case("n")))
    interfaces: tuple[Interface, ...] = ()
    if bridge:
        interfaces = tuple(draw(st.lists(st.sampled_from(list(Interface)), max_size=2)))
        parts += [b"i" if i is Interface.INTERNAL else b"e" for i in interfaces]
    z = draw(st.none() | st.integers(1, 999))
    if z is not None:
        parts.append(draw(case("z")) + b"%d" % z)
    codecs = draw(st.none() | st.lists(st.integers(0, 127), min_size=1, max_size=4))
    codec_bytes = None if codecs is None else b",".join(b"%d" % c for c in codecs)
    if codec_bytes is not None:
        parts.append(draw(case("c")) + codec_bytes)
    local = draw(st.none() | ipv4 | st.sampled_from(["{int}", "{v6}", "[::1]", "[2001:db8::5]"]))
    local_spec = None
    if local is not None:
        parts.append(draw(case("l")) + local.encode())
        label = local.startswith("{")
        local_spec = AddressSpec(local.strip("{}[]"), is_label=label)
    remote = draw(st.none() | ipv4 | st.just("[2001:db8::1]"))
    remote_spec = None
    if remote is not None:
        parts.append(draw(case("r")) + remote.encode())
        remote_spec = AddressSpec(remote.strip("[]"))
    # order is free except that "6" stays first; shuffle the rest
    head, tail = parts[:1] if ipv6 else [], parts[1:] if ipv6 else parts
    tail = draw(st.permutations(tail))
    # keep the a/s order as drawn: recompute asymmetric from the final order
    asym_final: bool | None = None
    for part in tail:
        if part.lower() in (b"a", b"s"):
            asym_final = part.lower() == b"a"
    del asymmetric
    # an address or number must not be followed by something that extends it
    mods = b""
    for part in head + list(tail):
        if mods and mods[-1:].isdigit() and part[:1].isdigit():
            return draw(update_modifiers(bridge))
        mods += part
    # a bridge-mode i/e order matters too: rebuild from the final order
    if bridge:
        interfaces = tuple(
            Interface.INTERNAL if p == b"i" else Interface.EXTERNAL
            for p in tail
            if p in (b"i", b"e")
        )
    return mods, UpdateModifiers(
        asymmetric=asym_final,
        weak=weak,
        ipv6=ipv6,
        interfaces=interfaces,
        repacketize_ms=z,
        codecs=codec_bytes,
        local_address=local_spec,
        remote_address=remote_spec,
        new_port=new_port,
    )


@st.composite
def update_command(draw: st.DrawFn) -> Built:
    bridge = draw(st.booleans())
    lookup = draw(st.booleans())
    mods, modifiers = draw(update_modifiers(bridge))
    call_id, addr, port, from_tag = (draw(token) for _ in range(4))
    to_tag = draw(st.none() | token)
    notify_socket = notify_tag = None
    words = [draw(case("l" if lookup else "u")) + mods, call_id, addr, port, from_tag]
    if to_tag is not None:
        words.append(to_tag)
    if not lookup and draw(st.booleans()):
        notify_socket = draw(token)
        notify_tag = draw(st.binary(min_size=1, max_size=12))
        encoded = b"".join(b"%%%02x" % c for c in notify_tag)
        words += [notify_socket, encoded]
    sep = draw(st.sampled_from([b" ", b"\t", b"  ", b"\r\n "]))
    return Built(
        sep.join(words) + draw(st.sampled_from([b"", b"\n", b"\r\n"])),
        bridge,
        Update(
            lookup_only=lookup,
            call_id=call_id,
            addr=addr,
            port=port,
            from_tag=from_tag,
            to_tag=to_tag,
            notify_socket=notify_socket,
            notify_tag=notify_tag,
            modifiers=modifiers,
        ),
    )


@st.composite
def other_command(draw: st.DrawFn) -> Built:
    kind = draw(st.sampled_from(["D", "Q", "G", "V", "VF", "I", "X"]))
    call_id, from_tag = draw(token), draw(token)
    to_tag = draw(st.none() | token)
    tail = [call_id, from_tag] + ([to_tag] if to_tag is not None else [])
    expected: object
    if kind == "D":
        weak = draw(st.booleans())
        word = draw(case("dw" if weak else "d"))
        expected = Delete(call_id, from_tag, to_tag, weak)
    elif kind == "Q":
        verbose = draw(st.booleans())
        word = draw(case("qv" if verbose else "q"))
        counters: tuple[bytes, ...] = ()
        if to_tag is not None:
            counters = tuple(draw(st.lists(token, max_size=10)))
            tail += list(counters)
        expected = Query(call_id, from_tag, to_tag, counters, verbose)
    elif kind == "G":
        verbose = draw(st.booleans())
        word = draw(case("gv" if verbose else "g"))
        names = tuple(draw(st.lists(token, max_size=20)))
        tail = list(names)
        expected = GetCounters(names, verbose)
    elif kind == "V":
        word, tail, expected = draw(case("v")), [], Version()
    elif kind == "VF":
        date = draw(token)
        word, tail, expected = draw(case("vf")), [date], VersionFeature(date)
    elif kind == "I":
        brief, load = draw(st.booleans()), draw(st.booleans())
        word = draw(case("i")) + (b"b" if brief else b"") + (b"L" if load else b"")
        tail, expected = [], Info(brief, load)
    else:
        word, tail, expected = draw(case("x")), [], DeleteAll()
    return Built(b" ".join([word, *tail]), False, expected)


@settings(max_examples=400, deadline=None)
@given(update_command() | other_command())
def test_well_formed_commands_round_trip(built: Built) -> None:
    assert parse(built.data, bridge_mode=built.bridge) == built.expected


@SETTINGS
@given(update_command() | other_command(), token)
def test_cookie_is_split_off(built: Built, cookie: bytes) -> None:
    assume(b"\0" not in cookie[-1:])
    got_cookie, rest = split_cookie(b" " + cookie + b" " + built.data)
    assert got_cookie == cookie
    assert parse(rest, bridge_mode=built.bridge) == built.expected


# --- every reply has one of the spec's forms ------------------------------------------

_PORT = rb"[1-9]\d*(?: \d+\.\d+\.\d+\.\d+| [0-9a-f:.]+ 6)?"
_VALUE = rb"(?:[a-z_]+=)?\d+(?:\.\d{6})?"
_SUB = rb"(?: && (?:0|-\d+|" + _PORT + rb"))*"
_I = (
    rb"sessions created: \d+\nactive sessions: \d+\nactive streams: \d+\n"
    rb"packets received: \d+\npackets transmitted: \d+(?:\naverage load: 0\.000000)?"
)
REPLY = re.compile(
    rb"E(?:" + b"|".join(b"%d" % c.value for c in ErrorCode) + rb")"
    rb"|0|1|20040107"
    rb"|" + _PORT + _SUB + rb"|(?:" + _VALUE + rb"(?: " + _VALUE + rb")*)?" + _SUB + rb"|" + _I
)

# -l 127.0.0.1/127.0.0.2 -A 192.0.2.1/192.0.2.2 (bridge) or -l 127.0.0.1 -6 ::1
PLANS = [
    AddressPlan(ipv4=(LocalAddress("127.0.0.1"),), ipv6=(LocalAddress("::1", ipv6=True),)),
    AddressPlan(
        ipv4=(
            LocalAddress("127.0.0.1", advertised="192.0.2.1"),
            LocalAddress("127.0.0.2", advertised="192.0.2.2"),
        )
    ),
    AddressPlan(),
]

pool_token = st.sampled_from([b"c1", b"c2", b"t1", b"t2", b"t1;1", b"t2;1", b"t3"])
addr = st.sampled_from([b"127.0.0.1", b"0.0.0.0", b"::1", b"1.2.3", b"10.0.0.5", b"x.y.z.w.q"])
port = st.sampled_from([b"5000", b"0", b"99999", b"abc", b"4001"])
word = st.sampled_from(
    [
        b"U",
        b"Uw",
        b"Ua",
        b"Un",
        b"U6",
        b"Uie",
        b"Uz20c0,8",
        b"Ul127.0.0.2",
        b"Ur10.0.0.1",
        b"L",
        b"Lw",
        b"Le",
        b"Ln",
        b"D",
        b"Dw",
        b"Q",
        b"Qv",
        b"Qx",
        b"P",
        b"S",
        b"R",
        b"C",
        b"N",
    ]
)


@st.composite
def session_command(draw: st.DrawFn) -> bytes:
    w = draw(word)
    letter = w[:1]
    if letter in (b"U", b"L"):
        args = [draw(pool_token), draw(addr), draw(port), draw(pool_token)]
        args += draw(st.lists(pool_token, max_size=1 if letter == b"L" else 3))
    elif letter == b"P":
        args = [draw(pool_token), b"prompt", b"session", draw(pool_token)]
    elif letter == b"C":
        args = [draw(pool_token), b"udp:127.0.0.1:9", draw(pool_token)]
    else:
        args = [draw(pool_token), draw(pool_token)]
        args += draw(st.lists(pool_token, max_size=1))
        if letter == b"Q" and len(args) == 3:
            args += draw(
                st.lists(st.sampled_from([b"ttl", b"rtpa_javg", b"longest_ipi", b"nrelayed"]))
            )
    sub = draw(st.sampled_from([b"", b" && D", b" && L 127.0.0.1 6000", b" && Dw", b" && Z"]))
    return b" ".join([w, *args]) + sub


any_command = st.one_of(
    session_command(),
    st.sampled_from(
        [
            b"V",
            b"VF 20040107",
            b"VF 20081224",
            b"I",
            b"Il",
            b"X",
            b"G",
            b"G nsess_created total_duration pps_in",
            b"Gv ncmds_rcvd",
            b"G bogus",
        ]
    ),
    command_like,
)


def _is_listing(data: bytes) -> bool:
    try:
        return isinstance(parse(data), Introspect)
    except ProtocolError:
        return False


def _assert_reply_form(data: bytes, reply: bytes, listing: bool) -> None:
    """An rtpproxy reply of the spec's forms, or for ``Zsessions`` a valid listing page."""
    if listing:
        decode_page(reply)
        return
    assert REPLY.fullmatch(reply), (data, reply)
    assert len(reply) < 1024


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(range(len(PLANS))), st.lists(any_command, max_size=25))
def test_every_reply_has_a_spec_form(plan: int, commands: list[bytes]) -> None:
    engine = make_engine(addresses=PLANS[plan], notify_targets=("ns",))
    for i, data in enumerate(commands):
        listing = _is_listing(data)
        reply = run(engine, data, now=float(i))
        _assert_reply_form(data, reply, listing)
        cookie = b"ck%d" % i
        udp = run_udp(engine, cookie + b" " + data, now=float(i))
        assert udp.startswith(cookie + b" "), udp
        _assert_reply_form(data, udp[len(cookie) + 1 :], listing)
        if i % 5 == 4:
            expire(engine, float(i))


@settings(max_examples=100, deadline=None)
@given(st.lists(session_command(), max_size=30))
def test_port_replies_stay_in_range(commands: list[bytes]) -> None:
    engine = make_engine(port_min=20000, port_max=20100)
    for data in commands:
        reply = run(engine, data)
        first = reply.split(b" ", 1)[0]
        # only U and L answer with a port (Q's first number is the TTL, 60 here)
        if data[:1] in (b"U", b"L") and first.isdigit() and first != b"0":
            p = int(first)
            assert p % 2 == 0 and 20000 <= p <= 20098


def test_reply_regex_rejects_junk() -> None:
    for bad in [b"E4", b"E100", b"abc", b"1 2 x", b"30000 127.0.0.1 4", b"0 && ", b"\n"]:
        assert REPLY.fullmatch(bad) is None, bad
    for good in [
        b"E50",
        b"30000",
        b"30000 127.0.0.1",
        b"30000 ::1 6",
        b"",
        b"1 2 3.000000",
        b"ttl=3 nrelayed=0",
        b"59 0 0 0 0 && 0",
        b"30000 127.0.0.1 && -50",
    ]:
        assert REPLY.fullmatch(good) is not None, good
