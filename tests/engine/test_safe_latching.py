"""The default latching policy, ``--latching safe`` (engine/latching.py): the host the
U/L signalled latches at once, any other host only after a learning window in which the
signalled host stayed silent; a latched stream refuses other hosts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.addresses import Endpoint
from pyrtpproxy.engine.engine import Engine
from pyrtpproxy.engine.events import Event, Latched, LearningStarted, SourceRefused
from pyrtpproxy.engine.latching import RTPPROXY, SAFE, Candidates, LatchCause, Latching
from pyrtpproxy.engine.session import Session, Side, Stream

from .support import make_engine, rtcp, rtp, run

PHONE_NAT = "203.0.113.7"  # what Kamailio signals after NAT detection
PHONE = (PHONE_NAT, 61234)  # where the phone's media really comes from
CALLEE = Endpoint("10.0.0.6", 6000)
ATTACKER = ("198.51.100.66", 40000)
WINDOW = 0.2


def _session(engine: Engine) -> Session:
    return next(iter(engine.table))


def setup(caller: bytes = PHONE_NAT.encode() + b" 4000", latching: Latching = SAFE) -> Engine:
    """A complete session whose caller's U signalled ``caller``; leg B gets its media."""
    engine = make_engine(latching=latching)
    run(engine, b"U c %s ft" % caller, 0.0)
    run(engine, b"L c 10.0.0.6 6000 ft tt", 0.0)
    return engine


def caller_rtp(engine: Engine) -> Stream:
    return _session(engine).legs[Side.B].rtp


def send(
    engine: Engine, stream: Stream, packet: bytes, src: tuple[str, int], now: float
) -> tuple[Endpoint | None, bool, tuple[Event, ...]]:
    """One packet through the slow path: where it goes, settled, the events."""
    result = engine.receive(stream, packet, src, now)
    return result.dest, result.settled, result.events


def latches(events: tuple[Event, ...], stream: Stream) -> list[Latched]:
    """The latch events of ``stream`` (a packet to the other stream may have latched it)."""
    return [e for e in events if isinstance(e, Latched) and e.stream is stream]


def test_the_signalled_host_latches_at_once_on_any_port() -> None:
    engine = setup()
    caller = caller_rtp(engine)
    dest, settled, events = send(engine, caller, rtp(1), PHONE, 1.0)
    assert dest == CALLEE and settled
    assert caller.remote == PHONE and caller.latched
    (latched,) = latches(events, caller)
    assert latched.cause is LatchCause.SIGNALLED and not latched.relatched
    # the other party's media goes to the phone's real port
    assert _session(engine).legs[Side.A].rtp.receive(rtp(1, ssrc=5), CALLEE, 1.1) == PHONE


def test_another_host_is_held_for_the_window_then_wins() -> None:
    engine = setup(b"10.0.0.5 4000")  # a private SDP address (no fix_nated_sdp)
    caller, callee = caller_rtp(engine), _session(engine).legs[Side.A].rtp
    dest, settled, events = send(engine, caller, rtp(1), PHONE, 1.0)
    assert dest is None and not settled
    assert [type(e) for e in events] == [LearningStarted]
    for seq, now in ((2, 1.05), (3, 1.1), (4, 1.199)):
        dest, settled, events = send(engine, caller, rtp(seq), PHONE, now)
        assert (dest, settled, events) == (None, False, ())
    assert caller.held == 4 and caller.ignored == 4 and caller.accepted == 0
    assert not caller.latched and caller.remote == Endpoint("10.0.0.5", 4000)
    # meanwhile the other direction still goes to the signalled address, not the candidate
    assert callee.receive(rtp(1, ssrc=5), CALLEE, 1.15) == Endpoint("10.0.0.5", 4000)
    # the window is measured from the first candidate packet
    dest, settled, events = send(engine, caller, rtp(5), PHONE, 1.2)
    assert dest == CALLEE and settled
    (latched,) = latches(events, caller)
    assert latched.cause is LatchCause.LEARNED
    assert caller.remote == PHONE and caller.held == 4
    assert callee.receive(rtp(2, ssrc=5), CALLEE, 1.25) == PHONE


def test_the_window_length_is_configurable() -> None:
    engine = setup(b"10.0.0.5 4000", latching=Latching(window=1.5))
    caller = caller_rtp(engine)
    assert caller.receive(rtp(1), PHONE, 10.0) is None
    assert caller.receive(rtp(2), PHONE, 11.0) is None
    assert caller.receive(rtp(3), PHONE, 11.4) is None
    assert caller.receive(rtp(4), PHONE, 11.5) == CALLEE


def test_the_signalled_host_wins_during_the_window_and_the_candidate_is_refused() -> None:
    engine = setup()
    caller = caller_rtp(engine)
    for seq in range(5):  # the attacker sprays before the phone's first packet
        assert caller.receive(rtp(seq, ssrc=0xBAD), ATTACKER, 1.0 + seq / 100) is None
    dest, settled, events = send(engine, caller, rtp(100), PHONE, 1.1)
    assert dest == CALLEE and settled
    assert latches(events, caller)[0].cause is LatchCause.SIGNALLED
    # from now on the attacker is refused: counted, reported once
    refusals: list[SourceRefused] = []
    for seq in range(50):
        dest, settled, events = send(engine, caller, rtp(seq, ssrc=0xBAD), ATTACKER, 2 + seq)
        assert dest is None and not settled
        refusals += [e for e in events if isinstance(e, SourceRefused)]
    assert refusals == [SourceRefused(caller, Endpoint(*ATTACKER), foreign=True)]
    assert caller.foreign == 50 and caller.held == 5 and caller.ignored == 55
    assert caller.remote == PHONE
    # nothing reached the callee from the attacker, and the attacker gets nothing back
    assert _session(engine).legs[Side.A].rtp.receive(rtp(1, ssrc=5), CALLEE, 60.0) == PHONE


def test_the_busiest_candidate_wins_not_the_first() -> None:
    engine = setup(b"10.0.0.5 4000")
    caller = caller_rtp(engine)
    assert caller.receive(rtp(1, ssrc=0xBAD), ATTACKER, 1.0) is None  # opens the window
    for seq in range(10):
        assert caller.receive(rtp(seq), PHONE, 1.02 + seq * 0.015) is None
    # after the window: the attacker (2 packets) does not lead, the phone (11) does
    assert caller.receive(rtp(2, ssrc=0xBAD), ATTACKER, 1.25) is None
    assert not caller.latched
    assert caller.receive(rtp(10), PHONE, 1.26) == CALLEE
    assert caller.remote == PHONE
    assert caller.receive(rtp(3, ssrc=0xBAD), ATTACKER, 1.27) is None
    assert caller.foreign == 1


def test_a_scan_over_many_sources_does_not_crowd_the_phone_out() -> None:
    candidates = Candidates(ends_at=1.0)
    phone = Endpoint(*PHONE)
    for n in range(1000):  # every packet of the scan from a new source port
        candidates.count(Endpoint("198.51.100.66", 10000 + n))
        if n % 5 == 0:  # the phone sends one packet in six
            candidates.count(phone)
    assert candidates.leads(phone)
    assert not candidates.leads(Endpoint("198.51.100.66", 10999))


def test_an_unknown_address_is_learned_after_the_window() -> None:
    engine = setup(b"0.0.0.0 0")
    caller, callee = caller_rtp(engine), _session(engine).legs[Side.A].rtp
    assert caller.remote is None
    assert caller.receive(rtp(1), PHONE, 1.0) is None
    assert caller.receive(rtp(2), PHONE, 1.02) is None
    # the other direction has no destination yet: dropped as rtpproxy does
    assert callee.receive(rtp(1, ssrc=5), CALLEE, 1.1) is None
    assert callee.dropped == 1
    assert caller.receive(rtp(3), PHONE, 1.2) == CALLEE
    assert caller.remote == PHONE and caller.from_media
    assert caller.leg.rtcp.remote == Endpoint(PHONE_NAT, 61235)  # RTCP guessed as usual
    assert callee.receive(rtp(2, ssrc=5), CALLEE, 1.3) == PHONE


def test_the_signalled_host_takes_over_from_a_learned_source() -> None:
    engine = setup()
    caller = caller_rtp(engine)
    # the phone is silent at first: sweeps that come back after the window win ...
    caller.receive(rtp(1, ssrc=0xBAD), ATTACKER, 1.0)
    assert caller.receive(rtp(2, ssrc=0xBAD), ATTACKER, 1.3) is None  # one is not enough
    assert send(engine, caller, rtp(3, ssrc=0xBAD), ATTACKER, 1.6)[0] == CALLEE
    assert caller.remote == ATTACKER
    # ... until the signalled host speaks: it latches at once, whatever the SSRC
    dest, settled, events = send(engine, caller, rtp(500), PHONE, 1.4)
    assert dest == CALLEE and settled
    (latched,) = latches(events, caller)
    assert latched.relatched and latched.cause is LatchCause.SIGNALLED
    assert caller.remote == PHONE
    assert caller.receive(rtp(3, ssrc=0xBAD), ATTACKER, 1.5) is None


def test_nat_rebinding_on_the_same_host_keeps_the_stream() -> None:
    engine = setup()
    caller = caller_rtp(engine)
    send(engine, caller, rtp(100), PHONE, 20.0)
    moved = (PHONE_NAT, 41010)
    dest, settled, events = send(engine, caller, rtp(101), moved, 20.5)
    assert dest == CALLEE and settled
    (latched,) = latches(events, caller)
    assert latched.relatched and latched.cause is LatchCause.SAME_STREAM
    assert caller.remote == moved
    # another stream from the same host is refused, but it is not a foreign host
    assert caller.receive(rtp(7, ssrc=99), (PHONE_NAT, 41020), 21.0) is None
    assert caller.ignored == 1 and caller.foreign == 0


def test_another_host_cannot_take_over_with_the_stream_s_ssrc() -> None:
    for latching, relatched in ((SAFE, False), (RTPPROXY, True)):
        engine = setup(latching=latching)
        caller = caller_rtp(engine)
        caller.receive(rtp(100), PHONE, 20.0)
        # a guessed (or leaked) SSRC with a close sequence number from another host
        accepted = caller.receive(rtp(101), ATTACKER, 20.5) is not None
        assert accepted is relatched
        assert (caller.remote == ATTACKER) is relatched


def test_a_u_with_the_same_address_opens_the_window_for_its_host_only() -> None:
    engine = setup()
    caller = caller_rtp(engine)
    caller.receive(rtp(10), PHONE, 30.0)
    run(engine, b"U c 203.0.113.7 4000 ft", 100.0)  # a re-INVITE refresh
    assert caller.receive(rtp(500, ssrc=2), ATTACKER, 101.0) is None
    assert caller.foreign == 1
    # the phone's host may move on any RTP within the 10 s, as in rtpproxy
    moved = (PHONE_NAT, 5555)
    assert caller.receive(rtp(9000, ssrc=2), moved, 105.0) == CALLEE
    assert caller.remote == moved


def test_a_u_with_a_new_address_lets_any_host_relatch_for_10_seconds() -> None:
    engine = setup()
    caller = caller_rtp(engine)
    send(engine, caller, rtp(10), PHONE, 30.0)
    # the phone moved to another network; its SDP is private again (no fix_nated_sdp)
    run(engine, b"U c 10.1.2.3 4000 ft", 100.0)
    assert caller.remote == PHONE  # the learned address stays until media moves it
    elsewhere = ("192.0.2.99", 30000)
    dest, _settled, events = send(engine, caller, rtp(1, ssrc=7), elsewhere, 104.0)
    assert dest == CALLEE
    (latched,) = latches(events, caller)
    assert latched.relatched and latched.cause is LatchCause.UPDATE
    # after the window only its own stream moves it again
    assert caller.receive(rtp(1, ssrc=8), ATTACKER, 110.5) is None
    assert caller.remote == elsewhere


def test_rtcp_trusts_the_host_its_rtp_latched_to() -> None:
    engine = setup(b"10.0.0.5 4000")
    leg = _session(engine).legs[Side.B]
    send(engine, leg.rtp, rtp(1), PHONE, 1.0)
    send(engine, leg.rtp, rtp(2), PHONE, 1.1)
    assert send(engine, leg.rtp, rtp(3), PHONE, 1.2)[0] == CALLEE  # learned after the window
    # RTCP from the phone's host on a port the NAT chose: latched at once
    rtcp_src = (PHONE_NAT, 61300)
    dest, settled, events = send(engine, leg.rtcp, rtcp(), rtcp_src, 1.3)
    assert dest == Endpoint("10.0.0.6", 6001) and settled
    (latched,) = latches(events, leg.rtcp)
    assert latched.cause is LatchCause.MEDIA_HOST
    assert leg.rtcp.remote == rtcp_src
    # RTCP from another host: refused where the leg's RTP latched (RTCP is too rare to
    # outvote a scan), held for a window where it did not
    assert leg.rtcp.receive(rtcp(), ATTACKER, 1.4) is None
    assert (leg.rtcp.foreign, leg.rtcp.held) == (1, 0)
    other = _session(engine).legs[Side.A].rtcp
    assert other.receive(rtcp(), ATTACKER, 1.4) is None
    assert (other.foreign, other.held) == (0, 1)


def test_asymmetric_legs_count_other_hosts_as_foreign() -> None:
    engine = make_engine()
    run(engine, b"Ua c 203.0.113.7 4000 ft", 0.0)
    run(engine, b"L c 10.0.0.6 6000 ft tt", 0.0)
    caller = caller_rtp(engine)
    assert caller.leg.asymmetric
    assert caller.receive(rtp(1), (PHONE_NAT, 9999), 1.0) == CALLEE
    assert caller.receive(rtp(2), ATTACKER, 1.1) is None
    assert caller.receive(rtp(3), (PHONE_NAT, 9998), 1.2) == CALLEE
    assert caller.foreign == 1 and caller.held == 0


def test_drops_are_counted_by_reason_and_g_sums_them() -> None:
    engine = setup()
    caller = caller_rtp(engine)
    caller.receive(rtp(1, ssrc=0xBAD), ATTACKER, 1.0)  # held: learning
    caller.receive(rtp(1), PHONE, 1.1)  # latched
    caller.receive(rtp(2, ssrc=0xBAD), ATTACKER, 1.2)  # foreign_source
    caller.receive(rtp(3, ssrc=99), (PHONE_NAT, 1), 1.3)  # wrong_source
    drops = engine.snapshot(2.0).drops
    assert (drops["learning"], drops["foreign_source"], drops["wrong_source"]) == (1, 1, 1)
    assert run(engine, b"G npkts_rcvd npkts_relayed npkts_discard", 2.0) == b"4 1 3"
    assert run(engine, b"Qv c ft tt ndropped npkts_ina", 2.0) == b"ndropped=0 npkts_ina=1"
    # the totals outlive the session
    run(engine, b"D c ft tt", 3.0)
    drops = engine.snapshot(3.0).drops
    assert (drops["learning"], drops["foreign_source"], drops["wrong_source"]) == (1, 1, 1)


HOSTS = st.sampled_from(["203.0.113.7", "198.51.100.66", "198.51.100.67", "10.0.0.5"])
PACKETS = st.lists(
    st.tuples(
        HOSTS,
        st.integers(1, 4),  # a few source ports per host
        st.integers(1, 3),  # a few SSRCs
        st.integers(0, 65535),
        st.floats(0.0, 0.5),  # time since the previous packet
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(packets=PACKETS)
def test_once_the_signalled_host_spoke_no_other_host_is_relayed(
    packets: list[tuple[str, int, int, int, float]],
) -> None:
    engine = setup()
    caller = caller_rtp(engine)
    callee = _session(engine).legs[Side.A].rtp
    now, phone_spoke = 1.0, False
    for host, port, ssrc, seq, step in packets:
        now += step
        dest = caller.receive(rtp(seq, ssrc=ssrc), (host, port), now)
        if host == PHONE_NAT:
            if not phone_spoke:
                assert dest == CALLEE  # the signalled host's first packet latches at once
            phone_spoke = True
        elif phone_spoke:
            assert dest is None
        # whatever arrived, the callee's media goes to the signalled host's ports only
        back = callee.receive(rtp(seq, ssrc=77), CALLEE, now)
        assert back is not None
        assert back.host == PHONE_NAT or not phone_spoke
