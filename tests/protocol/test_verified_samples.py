"""Every request → reply example the spec marks verified, driven through parse + Engine.

Ports are random in the reference and here, so expected replies use placeholders:
``{A}`` matches a port and binds it on first use; later ``{A}`` must be the same port.
``{*}`` matches any port. Everything else is compared byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from engine.support import WILDCARD, FakeHost, expire, harness, make_engine, rtp, run, run_udp
from pyrtpproxy.engine.addresses import AddressPlan, Endpoint, LocalAddress
from pyrtpproxy.engine.engine import Engine
from pyrtpproxy.engine.latching import RTPPROXY
from pyrtpproxy.engine.session import Side

# -l 127.0.0.1/127.0.0.2 -A 192.0.2.1/192.0.2.2
BRIDGE = AddressPlan(
    ipv4=(
        LocalAddress("127.0.0.1", advertised="192.0.2.1"),
        LocalAddress("127.0.0.2", advertised="192.0.2.2"),
    )
)
# -l 127.0.0.1=203.0.113.5 -6 v6@::1
V6 = AddressPlan(
    ipv4=(LocalAddress("127.0.0.1", advertised="203.0.113.5"),),
    ipv6=(LocalAddress("::1", ipv6=True, label="v6"),),
    labelled=(LocalAddress("::1", ipv6=True, label="v6"),),
)
NOTIFY = ("unix:/var/run/ns.sock",)

_PLACEHOLDER = re.compile(rb"\{(\w+|\*)\}")


def _matches(expected: bytes, reply: bytes, bound: dict[bytes, bytes]) -> bool:
    pattern = b""
    names: list[bytes] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(expected):
        pattern += re.escape(expected[pos : m.start()])
        name = m.group(1)
        if name == b"*":
            pattern += rb"[1-9]\d*"
        elif name in bound:
            pattern += re.escape(bound[name])
        elif name in names:
            pattern += rb"(?P=%s)" % name
        else:
            pattern += rb"(?P<%s>[1-9]\d*)" % name
            names.append(name)
        pos = m.end()
    pattern += re.escape(expected[pos:])
    match = re.fullmatch(pattern, reply, re.DOTALL)
    if match is None:
        return False
    for name in names:
        bound[name] = match.group(name.decode())
    return True


@dataclass(frozen=True)
class Sample:
    """A sequence of requests and the replies the reference gave (verified)."""

    steps: tuple[tuple[bytes, bytes], ...]
    engine: Callable[[], Engine] = field(default=make_engine)
    udp: bool = False
    distinct: tuple[tuple[str, str], ...] = ()  # placeholder pairs that must differ


def _s(*steps: tuple[bytes, bytes], **kw: object) -> Sample:
    return Sample(steps=steps, **kw)  # type: ignore[arg-type]


def _wildcard() -> Engine:
    return make_engine(addresses=WILDCARD)


def _bridge() -> Engine:
    return make_engine(addresses=BRIDGE)


def _v6() -> Engine:
    return make_engine(addresses=V6)


def _notify() -> Engine:
    return make_engine(notify_targets=NOTIFY)


TWENTY_FOUR = b"U cid 127.0.0.1 12345 ftag " + b" ".join(b"%d" % i for i in range(1, 20))
SUB_19 = b"U cid 127.0.0.1 12345 ftag && " + b" ".join(b"%d" % i for i in range(1, 20))
EXISTING = (b"U cid 127.0.0.1 5000 ftag", b"{*} 127.0.0.1")
EXISTING_L = (b"L cid 127.0.0.1 5002 ftag ttag", b"{*} 127.0.0.1")

SAMPLES: dict[str, Sample] = {
    # --- protocol.md §1 --------------------------------------------------------------
    "1.1 one unix read is one command": _s((b"V\nVF 20040107\n", b"E1")),
    "1.2 no cookie on streams": _s((b"abc V", b"E0")),
    "1.3 udp V": _s((b"abc V", b"abc 20040107"), udp=True),
    "1.3 udp U": _s((b"k2 U call 127.0.0.1 5000 t1", b"k2 {A} 127.0.0.1"), udp=True),
    "1.3 udp cookie only": _s((b"k4", b"k4 E5"), udp=True),
    "1.3 udp empty": _s((b"", b"E5"), udp=True),
    "1.3 udp V is the cookie": _s((b"V", b"V E5"), udp=True),
    "1.3 udp trailing newline": _s((b"k5 V\n", b"k5 20040107"), udp=True),
    # --- §3: wildcard local address → port only ----------------------------------------
    "3 port only without -l": _s((b"U c1 127.0.0.1 5000 ft", b"{A}"), engine=_wildcard),
    # --- §4.1 ------------------------------------------------------------------------
    "4.1 legs": _s(
        (b"U call1 127.0.0.1 40000 fromtag1", b"{A} 127.0.0.1"),
        (b"U call1 127.0.0.1 40000 fromtag1", b"{A} 127.0.0.1"),
        (b"L call1 127.0.0.1 40002 fromtag1 totag1", b"{B} 127.0.0.1"),
        (b"L call1 127.0.0.1 40002 fromtag1 totag1", b"{B} 127.0.0.1"),
        (b"U call1 127.0.0.1 40000 fromtag1 totag1", b"{A} 127.0.0.1"),
        (b"U call1 127.0.0.1 40002 totag1 fromtag1", b"{B} 127.0.0.1"),
        (b"L call1 127.0.0.1 40000 totag1 fromtag1", b"{A} 127.0.0.1"),
        (b"L call2 127.0.0.1 4000 a b", b"0"),
        distinct=(("A", "B"),),
    ),
    "4.2 U/L/Q exact, D prefix": _s(
        (b"U call 127.0.0.1 4000 ft;1", b"{A} 127.0.0.1"),
        (b"U call 127.0.0.1 4004 ft;2", b"{B} 127.0.0.1"),
        (b"Q call ft tt", b"E50"),
        (b"Q call ft;1 tt;1", b"60 0 0 0 0"),
        (b"D call ft", b"0"),
        (b"Q call ft;1 tt;1", b"E50"),
        (b"Q call ft;2 tt;2", b"E50"),
        distinct=(("A", "B"),),
    ),
    # --- §5.1 / §5.2 -----------------------------------------------------------------
    "5.1 V": _s((b"V", b"20040107"), (b"V foo", b"E1"), (b"Vx", b"E2")),
    "5.2 VF without -n": _s(
        (b"VF 20040107", b"1"),
        (b"VF 20081224", b"0"),
        (b"VF 20170313", b"0"),
        (b"vf 20050322", b"1"),
        (b"Vf", b"E1"),
        (b"Vfgarbage x", b"E2"),
        (b"VFx 20040107", b"E2"),
    ),
    "5.2 VF with -n": _s((b"VF 20081224", b"1"), engine=_notify),
    # --- §5.3 ------------------------------------------------------------------------
    "5.3 bad notify escapes": _s(
        (b"U c 127.0.0.1 5000 ft tt ns %25%25RTPP_NS_MSG%25%2", b"E10"),
        (b"U c 127.0.0.1 5000 ft tt ns %%RTPP_NS_MSG%%", b"E10"),
        engine=_notify,
    ),
    "5.3 short and unflagged v6 addresses ignored": _s(
        (b"U c 1.2.3 5000 ft", b"{A} 127.0.0.1"),
        (b"U d ::1 5000 ft", b"{B} 127.0.0.1"),
    ),
    "5.3 port wraps, port 0 accepted": _s(
        (b"U c 127.0.0.1 99999 ft", b"{A} 127.0.0.1"),
        (b"U d 127.0.0.1 0 ft", b"{B} 127.0.0.1"),
        (b"U e 127.0.0.1 65536 ft", b"{C} 127.0.0.1"),
    ),
    # --- §5.4 ------------------------------------------------------------------------
    "5.4 L unknown is 0, L with notify args is E1": _s(
        (b"L nosuch 127.0.0.1 4000 a b", b"0"),
        (b"L nosuch 127.0.0.1 4000 a b ns tag", b"E1"),
    ),
    # --- §5.5 bridging ---------------------------------------------------------------
    "5.5 bridge": _s(
        (b"U b1 127.0.0.1 5000 ft", b"{*} 192.0.2.1"),
        (b"Uie b2 127.0.0.1 5000 ft", b"{*} 192.0.2.2"),
        (b"Lie b2 127.0.0.1 5002 ft tt", b"{*} 192.0.2.1"),
        (b"Uei b3 127.0.0.1 5000 ft", b"{*} 192.0.2.1"),
        (b"Lei b3 127.0.0.1 5002 ft tt", b"{*} 192.0.2.2"),
        (b"Uiee b6 1.1.1.1 5 ft", b"E11"),
        (b"Ul127.0.0.2 b12 127.0.0.1 5000 ft", b"{*} 192.0.2.2"),
        (b"Un b13 127.0.0.1 5000 ft", b"{N1} 192.0.2.1"),
        (b"Un b13 127.0.0.1 5000 ft", b"{N2} 192.0.2.1"),
        (b"Usacwz30c8 b14 127.0.0.1 5000 ft", b"E14"),
        engine=_bridge,
        distinct=(("N1", "N2"),),
    ),
    "5.5 ipv6": _s(
        (b"U c1 127.0.0.1 5000 ft", b"{*} 203.0.113.5"),
        (b"U6 c2 ::1 5000 ft", b"{*} ::1 6"),
        engine=_v6,
    ),
    # --- §5.6 weak quirk -------------------------------------------------------------
    "5.6 Uw survives D and Dw by from-tag": _s(
        (b"Uw id 127.0.0.1 5000 ft", b"{A} 127.0.0.1"),
        (b"Dw id ft", b"0"),
        (b"D id ft", b"0"),
        (b"U id 127.0.0.1 5000 ft", b"{A} 127.0.0.1"),  # still there: same port
        (b"D id ft", b"0"),  # clears the strong flag the plain U set; weak A remains
        (b"Dw id x ft", b"0"),
        (b"D id ft", b"E50"),
    ),
    "5.6 U then Uw then D survives": _s(
        (b"U id 127.0.0.1 5000 ft", b"{A} 127.0.0.1"),
        (b"Uw id 127.0.0.1 5000 ft", b"{A} 127.0.0.1"),
        (b"D id ft", b"0"),
        (b"Q id ft", b"60 0 0 0 0"),
    ),
    # --- §5.7 / §5.8 -----------------------------------------------------------------
    "5.7 R without -r": _s(EXISTING, (b"R cid ftag", b"E50")),
    "5.8 N": _s(EXISTING, (b"N cid ftag", b"E50"), (b"Nx a b", b"E7"), (b"Nax a b", b"E6")),
    # --- §5.13 / §5.14 / §5.15 -------------------------------------------------------
    "5.13 G without names": _s((b"G", b"")),
    "5.14 I": _s(
        EXISTING,
        (
            b"I",
            b"sessions created: 1\nactive sessions: 1\nactive streams: 2\n"
            b"packets received: 0\npackets transmitted: 0",
        ),
        (b"I x", b"E1"),
    ),
    "5.14 Il": _s(
        (
            b"Il",
            b"sessions created: 0\nactive sessions: 0\nactive streams: 0\n"
            b"packets received: 0\npackets transmitted: 0\naverage load: 0.000000",
        ),
    ),
    "5.15 X": _s(EXISTING, (b"X", b"0"), (b"Q cid ftag", b"E50"), (b"X x", b"E1")),
    # §5.12 prose says "... && 0"; the reference (tools/compat_diff.py) appends sub-command
    # results only when one is not a plain 0, and a D after the session is gone gives -1.
    "5.16 Q && D": _s(
        EXISTING,
        EXISTING_L,
        (b"Q cid ftag ttag && D", b"60 0 0 0 0"),
        (b"Q cid ftag ttag", b"E50"),
    ),
    "5.16 Q && D && D": _s(
        EXISTING, EXISTING_L, (b"Q cid ftag ttag && D && D", b"60 0 0 0 0 && 0 && -1")
    ),
    # the reference needs the answerer's tag for a single-shot U && L
    "5.16 U && L": _s(
        (b"U c0 127.0.0.1 5000 ft && L 127.0.0.1 6000", b"E3"),
        (b"U c 127.0.0.1 5000 ft tt && L 127.0.0.1 6000", b"{A} 127.0.0.1 && {B} 127.0.0.1"),
        (b"L c 127.0.0.1 6000 ft tt", b"{B} 127.0.0.1"),
        (b"U c 127.0.0.1 5000 ft && Z", b"E3"),
        (b"L c 127.0.0.1 6000 ft tt && L 127.0.0.1 6000", b"E3"),
        distinct=(("A", "B"),),
    ),
    # --- error-codes.md verified samples ---------------------------------------------
    "E: empty": _s((b"", b"E5"), (b"\n", b"E5")),
    "E: unknown letters": _s((b"A" * 100, b"E0"), (b"A aVF 20080403", b"E0")),
    "E: U nargs": _s(
        (b"U", b"E1"),
        (b"U cid", b"E1"),
        (b"U cid tag", b"E1"),
        (b"U cid tag 39d9", b"E1"),
    ),
    "E: U modifiers": _s(
        (b"Ugarbage cid addr port tag", b"E35"),
        (b"Ux cid addr port tag", b"E35"),
        (b"Uie cid addr port tag", b"E12"),
        (b"Uei cid addr port tag", b"E11"),
        (b"Uz0 cid addr port tag", b"E13"),
        (b"Uc cid addr port tag", b"E14"),
        (b"Ul cid addr port tag", b"E15"),
        (b"Ul[1:2:3:4:5] cid addr port tag", b"E31"),
        (b"Ur cid addr port tag", b"E16"),
        (b"Ur[1:2:3:4:5] cid addr port tag", b"E32"),
    ),
    "E: address silently ignored": _s(
        (b"U cid W3.IT2Nl-t.gTL1Sejky 39d9ashjo ndkshf23", b"{A}"), engine=_wildcard
    ),
    "E: notify": _s(
        (b"U cid addr port ftag ttag %%RTPP_NS%% %%X%%", b"E10"),
        (b"U cid addr port ftag ttag ns %25%25X%25%25", b"E75"),
    ),
    "E: D": _s(
        (b"Dgarbage cid ftag", b"E8"),
        (b"D cid ftag", b"E50"),
        (b"D cid a b c", b"E1"),
        (b"Dx a b", b"E8"),
        (b"Dgarbage a", b"E1"),
    ),
    "E: P": _s(
        EXISTING,
        (b"Pgarbage cid p codecs ftag", b"E17"),
        (b"P cid prompt codecs ftag", b"E60"),
    ),
    "E: C": _s(
        EXISTING,
        EXISTING_L,
        (b"Cgarbage cid target ftag ttag", b"E7"),
        (b"C cid target ftag ttag", b"E65"),
    ),
    "E: V": _s((b"Vfgarbage x", b"E2"), (b"Vf x", b"0"), (b"V x", b"E1"), (b"Vx", b"E2")),
    "E: I": _s((b"Igarbage", b"E18"), (b"I x", b"E1"), (b"Igarbage x", b"E1")),
    "E: Q": _s(
        EXISTING,
        EXISTING_L,
        (b"Qg cid ftag ttag", b"E19"),
        (b"Qv cid ftag ttag garbage", b"E62"),
        (b"Qx nosuch tag", b"E50"),
    ),
    "E: X": _s((b"X x", b"E1"), (b"Xa", b"E2")),
    "E: tokens and &&": _s(
        (TWENTY_FOUR, b"E5"),
        (b"U cid 127.0.0.1 12345 ftag &&", b"E5"),
        (SUB_19, b"E3"),
    ),
    "E: check order": _s(
        (b"D cid ftag && D", b"E3"),
        (b"V && D", b"E3"),
        (b"Vx && D", b"E2"),
        (b"Vx foo", b"E1"),
        (b"Dx a b && D", b"E3"),
    ),
    "E: G": _s((b"G nonsense", b"E68"), (b"Ggarbage nonsense", b"E9")),
    "E: U6 without IPv6": _s((b"U6 c ::1 5000 a", b"E36")),
    "E: numeric addresses": _s(
        (b"U c 1.2.3.456 5 a", b"E37"),
        (b"U c 127.0.0.1 abc a", b"E37"),
    ),
    "E: R/N/S/V modifiers": _s(
        (b"Rp a b", b"E6"),
        (b"Rx a b", b"E7"),
        (b"Nx a b", b"E7"),
        (b"Nax a b", b"E6"),
        (b"Sx a b", b"E2"),
        (b"Xa", b"E2"),
        (b"Vx", b"E2"),
        (b"VFx 20040107", b"E2"),
    ),
    "E: udp": _s(
        (b"k4", b"k4 E5"),
        (b"k6 Z", b"k6 E0"),
        (b"k7 D nosuch a", b"k7 E50"),
        (b"", b"E5"),
        (b" \t\r\n", b"E5"),
        udp=True,
    ),
    # --- edge-cases.md ---------------------------------------------------------------
    "edge: udp oversize truncated": _s((b"ck " + b"c" * 8990 + b" V", b"ck E1"), udp=True),
    "edge: udp tab separator": _s((b"k10\tV", b"k10 20040107"), udp=True),
    "edge: several commands in one unix write": _s((b"V\nV", b"E1")),
    "edge: more than 15 &&": _s(
        EXISTING,
        (b"Q cid ftag" + b" && D" * 16, b"E5"),
    ),
    "edge: lower case": _s(
        (b"u lc 127.0.0.1 5000 t", b"{A} 127.0.0.1"),
        (b"q lc t", b"60 0 0 0 0"),
        (b"d lc t", b"0"),
        (b"vf 20040107", b"1"),
    ),
    "edge: non-UTF-8 call-id and tags": _s(
        (b"U \xff\xfe\x80call 127.0.0.1 5000 t\xc3\x28", b"{A} 127.0.0.1"),
        (b"U \xff\xfe\x80call 127.0.0.1 5000 t\xc3\x28", b"{A} 127.0.0.1"),
        (b"Q \xff\xfe\x80call t\xc3\x28", b"60 0 0 0 0"),
        (b"Q \xff\xfe\x80CALL t\xc3\x28", b"E50"),
        (b"D \xff\xfe\x80call t\xc3\x28", b"0"),
    ),
    "edge: NUL in a token": _s((b"U c\0id 127.0.0.1 5000 t", b"E5"), (b"V\0x", b"E5")),
    "edge: punctuation in call-id": _s(
        (b"U *3:R9//u@-JojSdZ\\`-KJ!?we 127.0.0.1 5000 ;=%\"'<>{}[]", b"{A} 127.0.0.1"),
        (b"Q *3:R9//u@-JojSdZ\\`-KJ!?we ;=%\"'<>{}[]", b"60 0 0 0 0"),
        (b"Q *3:R9//u@-JojSdZ\\`-KJ!?wE ;=%\"'<>{}[]", b"E50"),
    ),
    "edge: hold, port 0, wrap": _s(
        (b"U c1 0.0.0.0 7000 t", b"{*} 127.0.0.1"),
        (b"U c2 127.0.0.1 0 t", b"{*} 127.0.0.1"),
        (b"U c3 127.0.0.1 65536 t", b"{*} 127.0.0.1"),
        (b"U c4 127.0.0.1 99999 t", b"{*} 127.0.0.1"),
    ),
    "edge: bad ports and hosts": _s(
        (b"U c 127.0.0.1 -1 t", b"E37"),
        (b"U c 127.0.0.1 abc t", b"E37"),
        (b"U c localhost 5000 t", b"E37"),
        (b"U c 1.2.3.456 5000 t", b"E37"),
        (
            b"I",
            b"sessions created: 0\nactive sessions: 0\nactive streams: 0\n"
            b"packets received: 0\npackets transmitted: 0",
        ),
    ),
    "edge: ignored hosts": _s(
        (b"U c1 1.2.3 5000 t", b"{*} 127.0.0.1"),
        (b"U c2 ::1 5000 t", b"{*} 127.0.0.1"),
        (b"U c3 localhost.localdomain 5000 t", b"{*} 127.0.0.1"),
    ),
    "edge: U6 without IPv6 local address": _s(
        (b"U6 c 127.0.0.1 5000 a", b"E36"),
        (b"U6 c [::1] 5000 a", b"E36"),
    ),
    "edge: semantic": _s(
        (b"L nosuch 127.0.0.1 4000 a b", b"0"),
        (b"D nosuch a", b"E50"),
        (b"Q nosuch a", b"E50"),
        (b"P nosuch p 0 a", b"E50"),
        (b"S nosuch a", b"E50"),
        (b"R nosuch a", b"E50"),
        (b"N nosuch a", b"E50"),
        (b"Qx nosuch a", b"E50"),
        (b"U c 127.0.0.1 5000 ft tt ns tag", b"E75"),
    ),
    "edge: notify socket not in -n list": _s(
        (b"U c 127.0.0.1 5000 ft tt unix:/elsewhere tag", b"{A} 127.0.0.1"),
        engine=_notify,
    ),
    "edge: same U twice": _s(
        (b"U c 127.0.0.1 5000 ft", b"{A} 127.0.0.1"),
        (b"U c 127.0.0.1 5000 ft", b"{A} 127.0.0.1"),
        (b"G nsess_created", b"1"),
    ),
    "edge: U from the callee first": _s(
        (b"U c 127.0.0.1 5000 ft", b"{A} 127.0.0.1"),
        (b"U c 127.0.0.1 6000 tt ft", b"{B} 127.0.0.1"),
        (b"L c 127.0.0.1 6000 ft tt", b"{B} 127.0.0.1"),
        (b"G nsess_created nsess_complete", b"1 1"),
        distinct=(("A", "B"),),
    ),
    "edge: X": _s(
        EXISTING,
        (b"U other 127.0.0.1 5 t", b"{*} 127.0.0.1"),
        (b"X", b"0"),
        (
            b"I",
            b"sessions created: 2\nactive sessions: 0\nactive streams: 0\n"
            b"packets received: 0\npackets transmitted: 0",
        ),
    ),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_verified_sample(name: str) -> None:
    sample = SAMPLES[name]
    engine = sample.engine()
    bound: dict[bytes, bytes] = {}
    for request, expected in sample.steps:
        reply = run_udp(engine, request) if sample.udp else run(engine, request)
        assert _matches(expected, reply, bound), (request, reply, expected)
    for first, second in sample.distinct:
        assert bound[first.encode()] != bound[second.encode()], bound


def test_u_and_l_ports_are_pairs_inside_the_range() -> None:
    engine = make_engine()
    a = int(run(engine, b"U c 127.0.0.1 5000 ft").split()[0])
    b = int(run(engine, b"L c 127.0.0.1 5002 ft tt").split()[0])
    for port in (a, b):
        assert port % 2 == 0 and port >= 35000 and port + 1 <= 65000


def test_port_above_65535_wraps() -> None:
    engine = make_engine()
    run(engine, b"U c 127.0.0.1 99999 ft")
    session = next(iter(engine.table))
    assert session.legs[Side.B].rtp.remote == Endpoint("127.0.0.1", 34463)
    assert session.legs[Side.B].rtcp.remote == Endpoint("127.0.0.1", 34464)


def test_port_zero_is_stored_and_hold_keeps_the_address() -> None:
    engine = make_engine()
    run(engine, b"U c 127.0.0.1 0 ft")
    leg = next(iter(engine.table)).legs[Side.B]
    assert leg.rtp.remote == Endpoint("127.0.0.1", 0)
    run(engine, b"U c 0.0.0.0 7000 ft")
    assert leg.on_hold
    assert leg.rtp.remote == Endpoint("127.0.0.1", 0)
    run(engine, b"U c 127.0.0.1 7000 ft")
    assert not leg.on_hold
    assert leg.rtp.remote == Endpoint("127.0.0.1", 7000)


def test_ignored_address_leaves_the_leg_without_remote() -> None:
    engine = make_engine()
    run(engine, b"U c 1.2.3 5000 ft")
    leg = next(iter(engine.table)).legs[Side.B]
    assert leg.rtp.remote is None


def _relay1(engine: Engine) -> None:
    """Set up relay1 and move two RTP packets each way; the caller's seq skips one."""
    run(engine, b"U relay1 127.0.0.1 40000 ftag")
    run(engine, b"L relay1 127.0.0.1 40002 ftag ttag")
    session = next(s for s in engine.table if s.call_id == b"relay1")
    caller, callee = session.legs[Side.B].rtp, session.legs[Side.A].rtp
    assert caller.receive(rtp(1, ssrc=7), ("127.0.0.1", 40000), 1.0) == ("127.0.0.1", 40002)
    assert callee.receive(rtp(1, ssrc=8), ("127.0.0.1", 40002), 1.1) == ("127.0.0.1", 40000)
    assert caller.receive(rtp(3, ssrc=7), ("127.0.0.1", 40000), 1.501305) is not None
    assert callee.receive(rtp(2, ssrc=8), ("127.0.0.1", 40002), 1.2) is not None
    expire(engine, 3.0)
    harness(engine).clock.now = 3.0  # over a second after the last packet: ttl 59


def test_q_sample() -> None:
    engine = make_engine()
    _relay1(engine)
    assert run(engine, b"Q relay1 ftag ttag") == b"59 2 2 4 0"
    assert run(engine, b"Qv relay1 ftag ttag") == (
        b"ttl=59 npkts_ina=2 npkts_ino=2 nrelayed=4 ndropped=0"
    )
    reply = run(
        engine,
        b"Qv relay1 ftag ttag ttl npkts_ina npkts_ino nrelayed ndropped rtpa_nsent "
        b"rtpa_nrcvd rtpa_ndups rtpa_nlost rtpa_perrs longest_ipi",
    )
    assert re.fullmatch(
        rb"ttl=59 npkts_ina=2 npkts_ino=2 nrelayed=4 ndropped=0 rtpa_nsent=3 rtpa_nrcvd=2 "
        rb"rtpa_ndups=0 rtpa_nlost=1 rtpa_perrs=0 longest_ipi=0\.50130\d",
        reply,
    ), reply
    # counters named in another order come back in that order
    assert run(engine, b"Q relay1 ftag ttag nrelayed ttl") == b"4 59"
    # the reverse direction sees the other party's stream
    assert run(engine, b"Q relay1 ttag ftag npkts_ina npkts_ino") == b"2 2"


def test_q_ndropped_when_no_destination() -> None:
    # the reference's first-packet rule (the default policy holds an unsignalled source
    # for its learning window first: tests/engine/test_safe_latching.py)
    engine = make_engine(latching=RTPPROXY)
    run(engine, b"U c 0.0.0.0 0 ftag")
    run(engine, b"L c 0.0.0.0 0 ftag ttag")
    session = next(iter(engine.table))
    # the callee talks first; nobody knows where the caller is yet
    assert session.legs[Side.A].rtp.receive(rtp(1), ("127.0.0.1", 40002), 0.5) is None
    assert run(engine, b"Qv c ftag ttag ndropped npkts_ino") == b"ndropped=1 npkts_ino=1"


def test_g_sample() -> None:
    """G nsess_created npkts_rcvd npkts_relayed npkts_discard → 6 5 4 2 (§5.13)."""
    engine = make_engine()
    for i in range(5):
        run(engine, b"U other%d 127.0.0.1 5000 t" % i)
    _relay1(engine)  # 4 relayed
    sessions = {s.call_id: s for s in engine.table}
    relay1 = sessions[b"relay1"]
    # a third party on the latched caller leg: received but discarded
    assert relay1.legs[Side.B].rtp.receive(rtp(9, ssrc=99), ("192.0.2.9", 1), 30.0) is None
    # a packet to an incomplete session: discarded, not received
    assert sessions[b"other0"].legs[Side.A].rtp.receive(rtp(1), ("127.0.0.1", 1), 30.0) is None
    assert run(engine, b"G nsess_created npkts_rcvd npkts_relayed npkts_discard") == b"6 5 4 2"
    assert run(engine, b"Gv nsess_created npkts_relayed") == b"nsess_created=6 npkts_relayed=4"
    # the numbers survive the sessions
    run(engine, b"X")
    assert run(engine, b"G nsess_created npkts_rcvd npkts_relayed npkts_discard") == b"6 5 4 2"
    assert run(engine, b"G nsess_destroyed") == b"6"


def test_fifteen_subcommands_are_accepted() -> None:
    engine = make_engine()
    run(engine, b"U cid 127.0.0.1 5000 ftag")
    reply = run(engine, b"Q cid ftag" + b" && D" * 15)
    assert reply.startswith(b"60 0 0 0 0 && 0"), reply
    assert run(engine, b"Q cid ftag") == b"E50"


def test_l_and_r_with_unusable_addresses_never_reach_the_media_layer() -> None:
    host = FakeHost(
        local_hosts={"1:2:3:4:5", "example.com"},
        routes={"1:2:3:4:5": "127.0.0.1", "example.com": "127.0.0.1"},
    )
    engine = make_engine(host=host)
    assert run(engine, b"Ul[1:2:3:4:5] c 127.0.0.1 5000 t") == b"E31"
    assert run(engine, b"Ur[1:2:3:4:5] c 127.0.0.1 5000 t") == b"E32"
    assert run(engine, b"Ul[example.com] c 127.0.0.1 5000 t") == b"E31"
    assert run(engine, b"Ur[example.com] c 127.0.0.1 5000 t") == b"E32"
    assert run(engine, b"Ul[] c 127.0.0.1 5000 t") == b"E15"
    assert run(engine, b"Ur[] c 127.0.0.1 5000 t") == b"E16"
    assert run(engine, b"Ur{x} c 127.0.0.1 5000 t") == b"E16"
    assert run(engine, b"I").startswith(b"sessions created: ")
    assert run(engine, b"Q c t") == b"E50"


def test_l_and_r_pick_usable_addresses() -> None:
    host = FakeHost(local_hosts={"127.0.0.9"}, routes={"10.0.0.1": "127.0.0.2"})
    engine = make_engine(addresses=BRIDGE, host=host)
    # r: the local address towards 10.0.0.1 is the configured external one
    assert re.fullmatch(rb"\d+ 192\.0\.2\.2", run(engine, b"Ur10.0.0.1z20 c1 127.0.0.1 5 t"))
    assert run(engine, b"Ur10.0.0.2 c2 127.0.0.1 5 t") == b"E32"  # no route
    # l: an unconfigured but bindable address is used as is
    assert re.fullmatch(rb"\d+ 127\.0\.0\.9", run(engine, b"Ul127.0.0.9 c3 127.0.0.1 5 t"))
    assert run(engine, b"Ul127.0.0.8 c4 127.0.0.1 5 t") == b"E31"
    v6 = make_engine(addresses=V6)
    assert re.fullmatch(rb"\d+ ::1 6", run(v6, b"Ul{v6} c 127.0.0.1 5000 t"))
    assert run(v6, b"Ul{nope} d 127.0.0.1 5000 t") == b"E31"
