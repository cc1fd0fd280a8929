"""Source-address learning on Stream.receive (relay-behaviour.md §2, §3, §4): the
reference's rules, ``--latching rtpproxy``, where the first source wins. The default
policy's rules are in test_safe_latching.py."""

from __future__ import annotations

from typing import Any

from pyrtpproxy.engine.addresses import Endpoint
from pyrtpproxy.engine.engine import Engine
from pyrtpproxy.engine.latching import RTPPROXY
from pyrtpproxy.engine.session import Session, Side

from . import support
from .support import rtcp, rtp, run


def make_engine(**options: Any) -> Engine:
    """An engine with ``--latching rtpproxy``."""
    return support.make_engine(latching=RTPPROXY, **options)


NAT = ("203.0.113.7", 61234)
CALLER_SDP = Endpoint("10.0.0.5", 4000)
CALLEE_SDP = Endpoint("10.0.0.6", 6000)
STRANGER = ("198.51.100.1", 5000)


def _session(engine: Engine, call: bytes = b"c") -> Session:
    return next(s for s in engine.table if s.call_id == call)


def setup(u_mods: bytes = b"", caller: bytes = b"10.0.0.5 4000", now: float = 0.0) -> Session:
    """A complete session: leg B gets the caller's media, leg A the callee's."""
    engine = make_engine()
    run(engine, b"U%s c %s ft" % (u_mods, caller), now)
    run(engine, b"L c 10.0.0.6 6000 ft tt", now)
    return _session(engine)


def test_nothing_relayed_before_complete() -> None:
    engine = make_engine()
    run(engine, b"U c 0.0.0.0 0 ft")
    session = _session(engine)
    for leg in session.legs:
        for stream, packet in ((leg.rtp, rtp(1)), (leg.rtcp, rtcp())):
            assert stream.receive(packet, NAT, 1.0) is None
            assert stream.incomplete == 1
            assert stream.remote is None and not stream.latched
            assert stream.packets_in == 0
    assert run(engine, b"G npkts_rcvd npkts_discard") == b"0 4"
    # once complete, the very same source latches (nothing was learned before)
    run(engine, b"L c 10.0.0.6 6000 ft tt")
    assert session.legs[Side.B].rtp.receive(rtp(2), NAT, 2.0) == CALLEE_SDP
    assert session.legs[Side.B].rtp.remote == NAT


def test_first_packet_latches_to_the_nat_address() -> None:
    session = setup()
    caller, callee = session.legs[Side.B], session.legs[Side.A]
    assert caller.rtp.remote == CALLER_SDP
    assert caller.rtp.receive(rtp(1), NAT, 1.0) == CALLEE_SDP
    assert caller.rtp.remote == NAT and caller.rtp.latched and caller.rtp.from_media
    # the opposite direction now goes to the NAT address
    assert callee.rtp.receive(rtp(1, ssrc=5), CALLEE_SDP, 1.1) == NAT
    # the RTCP address is guessed as RTP port + 1 on the new host
    assert caller.rtcp.remote == Endpoint("203.0.113.7", 61235)
    assert callee.rtcp.receive(rtcp(), Endpoint("10.0.0.6", 6001), 1.2) == ("203.0.113.7", 61235)


def test_third_party_refused_after_latching() -> None:
    session = setup()
    caller = session.legs[Side.B].rtp
    caller.receive(rtp(100, ssrc=1), NAT, 20.0)
    assert caller.receive(rtp(101, ssrc=2), STRANGER, 20.1) is None
    assert caller.ignored == 1 and caller.remote == NAT
    # same SSRC but a sequence number far away: refused too
    assert caller.receive(rtp(100 + 537, ssrc=1), STRANGER, 20.2) is None
    assert caller.receive(rtp(100 - 537, ssrc=1), STRANGER, 20.2) is None
    assert caller.remote == NAT
    # not RTP at all: refused
    assert caller.receive(b"\x00" * 20, STRANGER, 20.3) is None
    # the latched source itself still passes
    assert caller.receive(rtp(102, ssrc=1), NAT, 20.4) == CALLEE_SDP
    assert caller.ignored == 4
    assert caller.accepted == 2


def test_relatch_with_same_ssrc_and_close_sequence() -> None:
    session = setup()
    caller, callee = session.legs[Side.B].rtp, session.legs[Side.A].rtp
    caller.receive(rtp(65500, ssrc=1), NAT, 20.0)
    moved = ("203.0.113.7", 41010)
    # 536 ahead, across the 16-bit wrap
    assert caller.receive(rtp(65500 + 536, ssrc=1), moved, 20.5) == CALLEE_SDP
    assert caller.remote == moved
    assert callee.receive(rtp(1, ssrc=9), CALLEE_SDP, 20.6) == moved
    # and back again, behind the last one seen
    assert caller.receive(rtp(65500, ssrc=1), NAT, 21.0) == CALLEE_SDP
    assert caller.remote == NAT


def test_relatch_refused_with_a_different_ssrc() -> None:
    session = setup()
    caller = session.legs[Side.B].rtp
    caller.receive(rtp(10, ssrc=1), NAT, 20.0)
    assert caller.receive(rtp(11, ssrc=2), ("203.0.113.7", 41010), 20.5) is None
    assert caller.remote == NAT


def test_relatch_window_after_signalling() -> None:
    engine = make_engine()
    run(engine, b"U c 10.0.0.5 4000 ft", 0.0)
    run(engine, b"L c 10.0.0.6 6000 ft tt", 0.0)
    caller = _session(engine).legs[Side.B].rtp
    caller.receive(rtp(10, ssrc=1), NAT, 30.0)
    assert caller.receive(rtp(10, ssrc=2), STRANGER, 31.0) is None
    # a re-INVITE (U) at t=100 opens a 10 s window for any RTP source
    run(engine, b"U c 10.0.0.5 4000 ft", 100.0)
    assert caller.remote == NAT  # the SDP address does not replace the learned one
    assert caller.receive(rtp(500, ssrc=2), STRANGER, 105.0) == CALLEE_SDP
    assert caller.remote == STRANGER
    # after the window only the latched stream may move
    assert caller.receive(rtp(7, ssrc=3), NAT, 110.5) is None
    assert caller.remote == STRANGER
    # an L refreshes the callee's leg the same way
    callee = _session(engine).legs[Side.A].rtp
    callee.receive(rtp(1, ssrc=4), ("192.0.2.40", 7000), 200.0)
    assert callee.receive(rtp(1, ssrc=5), ("192.0.2.41", 7000), 201.0) is None
    run(engine, b"L c 10.0.0.6 6000 ft tt", 300.0)
    assert callee.receive(rtp(1, ssrc=5), ("192.0.2.41", 7000), 309.0) is not None
    assert callee.remote == ("192.0.2.41", 7000)


def test_rtcp_latches_on_its_own_and_never_relatches() -> None:
    engine = make_engine()
    run(engine, b"U c 10.0.0.5 4000 ft", 0.0)
    run(engine, b"L c 10.0.0.6 6000 ft tt", 0.0)
    caller = _session(engine).legs[Side.B]
    assert caller.rtcp.remote == Endpoint("10.0.0.5", 4001)  # SDP port + 1
    caller.rtp.receive(rtp(1), NAT, 1.0)
    assert caller.rtcp.remote == Endpoint("203.0.113.7", 61235)  # guessed
    assert not caller.rtcp.latched
    # the NAT mapped RTCP elsewhere: RTCP latches to where it really comes from
    rtcp_src = ("203.0.113.7", 61300)
    assert caller.rtcp.receive(rtcp(), rtcp_src, 1.5) == Endpoint("10.0.0.6", 6001)
    assert caller.rtcp.remote == rtcp_src and caller.rtcp.latched
    # the RTP latch did not move it back
    assert caller.rtp.receive(rtp(2), NAT, 1.6) is not None
    assert caller.rtcp.remote == rtcp_src
    # never re-latched: not from the guessed port, not even inside the 10 s window
    run(engine, b"U c 10.0.0.5 4000 ft", 50.0)
    assert caller.rtcp.receive(rtcp(), ("203.0.113.7", 61235), 51.0) is None
    assert caller.rtcp.receive(rtcp(), STRANGER, 51.0) is None
    assert caller.rtcp.remote == rtcp_src


def test_rtcp_guess_keeps_an_address_on_the_same_host() -> None:
    session = setup()
    caller = session.legs[Side.B]
    # media comes from the SDP host on another port: RTCP stays at SDP port + 1
    assert caller.rtp.receive(rtp(1), ("10.0.0.5", 4010), 1.0) is not None
    assert caller.rtp.remote == ("10.0.0.5", 4010)
    assert caller.rtcp.remote == Endpoint("10.0.0.5", 4001)


def test_asymmetric_accepts_any_port_of_the_host_and_keeps_the_sdp_port() -> None:
    session = setup(u_mods=b"a")
    caller, callee = session.legs[Side.B], session.legs[Side.A]
    assert caller.asymmetric and caller.rtp.latched
    assert caller.rtp.receive(rtp(1), ("10.0.0.5", 9999), 1.0) == CALLEE_SDP
    assert caller.rtp.receive(rtp(2, ssrc=77), ("10.0.0.5", 9998), 1.1) == CALLEE_SDP
    assert caller.rtp.remote == CALLER_SDP
    assert callee.rtp.receive(rtp(1), CALLEE_SDP, 1.2) == CALLER_SDP
    # another host is dropped, whatever its SSRC
    assert caller.rtp.receive(rtp(3), NAT, 1.3) is None
    assert caller.rtcp.receive(rtcp(), ("10.0.0.5", 1), 1.4) == Endpoint("10.0.0.6", 6001)
    assert caller.rtcp.remote == Endpoint("10.0.0.5", 4001)
    # signalling stays authoritative
    caller.signal(Endpoint("10.0.0.8", 4100), 2.0)
    assert caller.rtp.remote == Endpoint("10.0.0.8", 4100)
    assert caller.rtcp.remote == Endpoint("10.0.0.8", 4101)


def test_asymmetric_without_address_learns_from_the_first_packet() -> None:
    session = setup(u_mods=b"a", caller=b"0.0.0.0 0")
    caller = session.legs[Side.B].rtp
    assert caller.remote is None
    assert caller.receive(rtp(1), NAT, 1.0) == CALLEE_SDP
    assert caller.remote == NAT


def test_force_asymmetric_and_bridge_mode_default() -> None:
    engine = make_engine(force_asymmetric=True)
    run(engine, b"U c 10.0.0.5 4000 ft")
    assert _session(engine).legs[Side.B].asymmetric
    run(engine, b"Us d 10.0.0.5 4000 ft")
    assert not _session(engine, b"d").legs[Side.B].asymmetric


def test_hold_keeps_the_address() -> None:
    engine = make_engine()
    run(engine, b"U c 10.0.0.5 4000 ft")
    run(engine, b"L c 10.0.0.6 6000 ft tt")
    caller = _session(engine).legs[Side.B]
    run(engine, b"U c 0.0.0.0 4000 ft")
    assert caller.on_hold and caller.rtp.remote == CALLER_SDP
    # relaying is not otherwise affected
    assert _session(engine).legs[Side.A].rtp.receive(rtp(1), CALLEE_SDP, 1.0) == CALLER_SDP
    run(engine, b"U c 10.0.0.5 4000 ft")
    assert not caller.on_hold


def test_ssrc_zero_does_not_latch() -> None:
    session = setup()
    caller = session.legs[Side.B].rtp
    assert caller.receive(rtp(1, ssrc=0), CALLER_SDP, 1.0) == CALLEE_SDP
    assert not caller.latched
    # so a later source with a real SSRC still takes over
    assert caller.receive(rtp(2, ssrc=42), NAT, 1.1) == CALLEE_SDP
    assert caller.remote == NAT and caller.latched


def test_unknown_address_is_taken_from_the_first_packet() -> None:
    session = setup(caller=b"0.0.0.0 0")
    caller = session.legs[Side.B]
    assert caller.rtp.remote is None
    assert caller.rtp.receive(rtp(1), NAT, 1.0) == CALLEE_SDP
    assert caller.rtp.remote == NAT and caller.rtp.from_media
    assert caller.rtcp.remote == Endpoint("203.0.113.7", 61235)


def test_signalling_does_not_override_a_learned_address() -> None:
    engine = make_engine()
    run(engine, b"U c 10.0.0.5 4000 ft")
    run(engine, b"L c 10.0.0.6 6000 ft tt")
    caller = _session(engine).legs[Side.B]
    caller.rtp.receive(rtp(1), NAT, 1.0)
    run(engine, b"U c 10.0.0.9 4002 ft", 2.0)
    assert caller.rtp.remote == NAT
    # before any media, a new SDP address does replace the old one
    run(engine, b"L c 10.0.0.7 6002 ft tt", 2.0)
    assert _session(engine).legs[Side.A].rtp.remote == Endpoint("10.0.0.7", 6002)
    assert _session(engine).legs[Side.A].rtcp.remote == Endpoint("10.0.0.7", 6003)


def test_packet_without_destination_is_counted_dropped() -> None:
    engine = make_engine()
    run(engine, b"U c 0.0.0.0 0 ft")
    run(engine, b"L c 0.0.0.0 0 ft tt")
    callee = _session(engine).legs[Side.A].rtp
    assert callee.receive(rtp(1), CALLEE_SDP, 1.0) is None
    assert callee.dropped == 1 and callee.accepted == 1 and callee.ignored == 0
    assert callee.remote == CALLEE_SDP  # but the source was learned
