"""R, N and C: which leg gets which tap, the shared slot, the replies
(media-features.md §0 to §2; the sequences are the spec's verified ones)."""

from __future__ import annotations

from pyrtpproxy.engine.engine import Engine
from pyrtpproxy.engine.events import PortsReleased, TapStarted, TapStopped
from pyrtpproxy.engine.session import Session, Side
from pyrtpproxy.engine.taps import Direction, Recording, RecordingPolicy, UdpCopy

from .support import FakeHost, harness, make_engine, rtp, run

PER_LEG = RecordingPolicy()
PCAP = RecordingPolicy(pcap=True)


def _host() -> FakeHost:
    """The local address towards loopback is loopback (copies leave from there)."""
    return FakeHost(routes={"127.0.0.1": "127.0.0.1"})


def _call(engine: Engine, call: bytes = b"c1", tag: bytes = b"ft") -> Session:
    run(engine, b"U %s 127.0.0.1 5000 %s" % (call, tag))
    run(engine, b"L %s 127.0.0.1 5002 %s tt" % (call, tag))
    return next(s for s in engine.table if s.call_id == call and s.tag == tag)


def _started(engine: Engine) -> list[TapStarted]:
    return [e for e in harness(engine).take() if isinstance(e, TapStarted)]


def test_r_records_the_leg_of_the_first_tag() -> None:
    engine = make_engine(recording=PER_LEG)
    session = _call(engine)
    harness(engine).take()
    assert run(engine, b"R c1 ft tt") == b"0"
    (started,) = _started(engine)
    assert started.leg is session.legs[Side.B]
    assert started.tap == Recording(b"c1", b"ft", Direction.ORIGINATOR, None, False, False, True)
    assert run(engine, b"R c1 tt ft") == b"0"
    (started,) = _started(engine)
    assert started.leg is session.legs[Side.A] and started.tap.direction is Direction.ANSWERER
    assert run(engine, b"R c1 tt ft") == b"0"  # already recording: nothing new
    assert _started(engine) == []


def test_r_errors() -> None:
    engine = make_engine(recording=PER_LEG)
    _call(engine)
    assert run(engine, b"R nosuch ft tt") == b"E50"
    assert run(engine, b"Rp c1 ft tt") == b"E6"
    assert run(engine, b"Rsx c1 ft tt") == b"E7"
    assert run(engine, b"R m1") == b"E1"
    without_r = make_engine()
    _call(without_r)
    assert run(without_r, b"R c1 ft tt") == b"E50"
    host = FakeHost()
    host.unopenable.add(b"c1")
    unwritable = make_engine(recording=PER_LEG, host=host)
    _call(unwritable)
    assert run(unwritable, b"R c1 ft tt") == b"E50"
    assert unwritable.table.find(b"c1", b"ft", b"tt") is not None  # the call is untouched


def test_single_file_pcap_is_shared_by_both_legs() -> None:
    engine = make_engine(recording=PCAP)
    _call(engine, b"p2")
    assert run(engine, b"Rs p2 ft tt") == b"0"
    assert run(engine, b"Rs p2 ft tt") == b"E50"  # the leg already records
    assert run(engine, b"Rs p2 tt ft") == b"0"
    taps = [e.tap for e in _started(engine)]
    assert taps == [Recording(b"p2", b"ft", None, None, True, True, True)] * 2
    engine_plain = make_engine(recording=PER_LEG)
    _call(engine_plain, b"p2")
    assert run(engine_plain, b"Rs p2 ft tt") == b"0"  # s needs -P: plain R
    assert _started(engine_plain)[0].tap.single_file is False


def test_r_and_n_match_every_media_session_of_a_tag() -> None:
    engine = make_engine(recording=PER_LEG)
    _call(engine, b"c4", b"ft;1")
    _call(engine, b"c4", b"ft;2")
    harness(engine).take()
    assert run(engine, b"R c4 ft tt") == b"0"
    assert [e.tap.tag for e in _started(engine)] == [b"ft", b"ft"]  # the tag is cut at ;
    assert run(engine, b"N c4 ft;1 tt") == b"0"
    stopped = [e for e in harness(engine).take() if isinstance(e, TapStopped)]
    assert [e.leg.session.tag for e in stopped] == [b"ft;1"]


def test_n_stops_the_leg_and_na_both() -> None:
    engine = make_engine(recording=PER_LEG)
    session = _call(engine)
    run(engine, b"R c1 ft tt")
    run(engine, b"R c1 tt ft")
    assert run(engine, b"N c1 ft tt") == b"0"
    assert session.legs[Side.B].tap is None and session.legs[Side.A].tap is not None
    assert run(engine, b"Na c1 ft tt") == b"0"
    assert run(engine, b"Na c1 ft tt") == b"E50"  # nothing left
    assert run(engine, b"Nax c1 ft tt") == b"E6"
    assert run(engine, b"Nx c1 ft tt") == b"E7"


def test_a_tapped_leg_leaves_the_fast_path_and_comes_back() -> None:
    engine = make_engine(recording=PER_LEG)
    session = _call(engine)
    caller = session.legs[Side.B].rtp
    assert caller.receive(rtp(1), ("127.0.0.1", 5000), 1.0) is not None
    assert caller.settled(("127.0.0.1", 5000))
    engine.take_events()  # the latch
    harness(engine).take()
    run(engine, b"R c1 ft tt")
    # the media drops the leg's shortcuts and kernel offload on TapStarted
    assert [type(e) for e in harness(engine).take()] == [TapStarted]
    assert not caller.settled(("127.0.0.1", 5000))
    assert session.legs[Side.A].rtp.receive(rtp(1, 5), ("127.0.0.1", 5002), 1.1) is not None
    assert session.legs[Side.A].rtp.settled(("127.0.0.1", 5002))  # the other way is not tapped
    engine.take_events()
    run(engine, b"N c1 ft tt")
    assert [type(e) for e in harness(engine).take()] == [TapStopped]
    assert caller.settled(("127.0.0.1", 5000))


def test_taps_end_with_the_session() -> None:
    engine = make_engine(recording=PER_LEG, host=_host())
    session = _call(engine)
    run(engine, b"R c1 ft tt")
    run(engine, b"C c1 udp:127.0.0.1:47690 tt ft")
    copy = session.legs[Side.A].tap
    assert isinstance(copy, UdpCopy)
    harness(engine).take()
    run(engine, b"D c1 ft tt")
    stopped = [e for e in harness(engine).take() if isinstance(e, TapStopped)]
    assert {e.leg.side for e in stopped} == {Side.A, Side.B}
    assert not engine.ports.in_use(copy.port)


def test_record_all_records_both_legs_at_creation() -> None:
    engine = make_engine(recording=RecordingPolicy(record_all=True))
    run(engine, b"U a1 127.0.0.1 5000 ft")
    taps = sorted(e.tap.direction.value for e in _started(engine) if e.tap.direction)
    assert taps == ["a", "o"]
    assert run(engine, b"R a1 ft") == b"0"  # already recording
    pcap_all = make_engine(recording=RecordingPolicy(pcap=True, record_all=True))
    run(pcap_all, b"U a2 127.0.0.1 5000 ft")
    assert [e.tap.single_file for e in _started(pcap_all)] == [True, True]
    assert run(pcap_all, b"Rs a2 ft") == b"E50"


def test_record_both_records_the_whole_session_into_one_pcap() -> None:
    engine = make_engine(recording=RecordingPolicy(pcap=True, both_directions=True))
    session = _call(engine)
    harness(engine).take()
    assert run(engine, b"R c1 ft tt") == b"0"
    started = _started(engine)
    assert [e.leg for e in started] == [session.legs[Side.B], session.legs[Side.A]]
    assert {e.tap for e in started} == {Recording(b"c1", b"ft", None, None, True, True, True)}


def test_udp_copy_takes_a_new_port_pair_and_shares_the_slot() -> None:
    # no -r needed
    engine = make_engine(port_min=42000, port_max=42100, sequential=True, host=_host())
    session = _call(engine, b"k1", b"ft;1")
    harness(engine).take()
    assert run(engine, b"Cp k1 udp:127.0.0.1:47690 ft;1 tt;1") == b"42004 127.0.0.1"
    (started,) = _started(engine)
    assert started.tap == UdpCopy(
        ("127.0.0.1", 47690),
        session.legs[Side.B].local,
        42004,
        True,  # type: ignore[arg-type]
    )
    # the slot is taken: ignored, and Cp's pair is given back at once
    assert run(engine, b"C k1 udp:127.0.0.1:47692 ft;1 tt;1") == b"0"
    assert run(engine, b"Cp k1 udp:localhost:47692 ft;1 tt;1") == b"42008 127.0.0.1"
    assert any(isinstance(e, PortsReleased) for e in harness(engine).take())
    assert not engine.ports.in_use(42006) and not engine.ports.in_use(42008)
    assert run(engine, b"C k1 udp:127.0.0.1:47690 ft tt") == b"E50"  # the session is ft;1
    assert run(engine, b"N k1 ft;1 tt;1") == b"0"  # N stops a copy too
    assert not engine.ports.in_use(42004)
    assert run(engine, b"C k1 udp:127.0.0.1:47694 ft;1 tt;1") == b"0"  # and C works again


def test_copy_errors() -> None:
    engine = make_engine(host=_host())
    _call(engine, b"k1")
    for bad in (
        b"C k1 udp:127.0.0.1 ft tt",  # no port
        b"C k1 udp:[::1]:47690 ft tt",
        b"C k1 udp::47690 ft tt",
        b"C k1 udp:127.0.0.1:abc ft tt",
        b"C k1 udp:127.0.0.1:65535 ft tt",  # RTCP would go to 65536
        b"C k1 udp:no.such.host:4000 ft tt",
        b"C k1 myname ft tt",  # a file needs -r
        b"Cp k1 fname ft tt",
    ):
        assert run(engine, bad) == b"E65", bad
    assert run(engine, b"Cx k1 fname ft tt") == b"E7"
    # a leg whose slot is taken answers 0 to a file copy even without -r (as rtpproxy)
    assert run(engine, b"C k1 udp:127.0.0.1:9 ft tt") == b"0"
    assert run(engine, b"Cs k1 target ft") == b"0"
    assert run(engine, b"Cp k1 target ft tt") == b"E65"
    without_rtcp = make_engine(copy_rtcp=False, host=_host())
    _call(without_rtcp, b"k1")
    assert run(without_rtcp, b"C k1 udp:127.0.0.1:65535 ft tt") == b"0"  # -R: no RTCP copy


def test_copy_to_a_file_records_like_r() -> None:
    engine = make_engine(recording=PER_LEG)
    session = _call(engine, b"k2")
    harness(engine).take()
    assert run(engine, b"C k2 myname ft tt") == b"0"
    (started,) = _started(engine)
    assert started.tap == Recording(b"k2", b"ft", None, b"myname", False, False, True)
    assert started.leg is session.legs[Side.B]
    assert run(engine, b"R k2 ft tt") == b"0"  # the slot is taken: R adds nothing
    assert _started(engine) == []
