"""Idle and setup timers, sweeps and timeout notifications (relay-behaviour.md §5, §6)."""

from __future__ import annotations

from pyrtpproxy.engine.addresses import NotifyTarget
from pyrtpproxy.engine.handler import Engine, Notification, RequestContext
from pyrtpproxy.engine.session import Session, Side

from .support import make_engine, rtp, run

NS = "unix:/var/run/ns.sock"


def _session(engine: Engine, call: bytes = b"c") -> Session:
    return next(s for s in engine.table if s.call_id == call)


def _complete(engine: Engine, call: bytes = b"c") -> Session:
    run(engine, b"U %s 10.0.0.5 4000 ft" % call)
    run(engine, b"L %s 10.0.0.6 6000 ft tt" % call)
    return _session(engine, call)


def test_idle_session_lives_t_plus_one_seconds() -> None:
    # -T 4 -W 2: Q showed 3,2,1,0 then E50 (verified)
    engine = make_engine(ttl=4, setup_ttl=2)
    _complete(engine)
    assert run(engine, b"Q c ft tt ttl") == b"4"
    seen = []
    for t in range(1, 6):
        assert engine.sweep(float(t)) == []
        seen.append(run(engine, b"Q c ft tt ttl"))
    assert seen == [b"3", b"2", b"1", b"0", b"E50"]
    assert run(engine, b"G nsess_timeout nsess_destroyed") == b"1 1"


def test_incomplete_session_uses_the_setup_timer() -> None:
    engine = make_engine(ttl=4, setup_ttl=2)
    run(engine, b"U c 10.0.0.5 4000 ft")
    assert run(engine, b"Q c ft tt ttl") == b"2"
    seen = []
    for t in range(1, 4):
        engine.sweep(float(t))
        seen.append(run(engine, b"Q c ft tt ttl"))
    assert seen == [b"1", b"0", b"E50"]


def test_completion_resets_both_legs_to_t() -> None:
    engine = make_engine(ttl=4, setup_ttl=2)
    run(engine, b"U c 10.0.0.5 4000 ft")
    engine.sweep(1.0)
    assert run(engine, b"Q c ft tt ttl") == b"1"
    run(engine, b"L c 10.0.0.6 6000 ft tt", 1.5)
    assert run(engine, b"Q c ft tt ttl") == b"4"
    assert [leg.ttl for leg in _session(engine).legs] == [4, 4]


def test_u_and_l_reset_the_timer() -> None:
    engine = make_engine(ttl=4)
    _complete(engine)
    for t in range(1, 4):
        engine.sweep(float(t))
    assert run(engine, b"Q c ft tt ttl") == b"1"
    run(engine, b"U c 10.0.0.5 4000 ft tt", 3.5)
    assert run(engine, b"Q c ft tt ttl") == b"4"
    engine.sweep(4.0)
    run(engine, b"L c 10.0.0.6 6000 ft tt", 4.5)
    assert run(engine, b"Q c ft tt ttl") == b"4"


def test_media_activity_resets_the_timer() -> None:
    engine = make_engine(ttl=4)
    session = _complete(engine)
    caller = session.legs[Side.B].rtp
    for t in range(1, 30):
        # media path: one packet relayed per second by the fast path, in one direction
        caller.fast_count += 1
        assert engine.sweep(float(t)) == []
        assert run(engine, b"Q c ft tt ttl") == b"3"
    # media stops: the last packet (before the sweep at 29) gave it T+1 seconds
    for t in range(30, 33):
        engine.sweep(float(t))
    assert run(engine, b"Q c ft tt ttl") == b"0"
    engine.sweep(33.0)
    assert run(engine, b"Q c ft tt") == b"E50"


def test_q_sees_a_packet_before_the_next_sweep() -> None:
    engine = make_engine(ttl=60)
    session = _complete(engine)
    for t in range(1, 31):
        engine.sweep(float(t))
    assert run(engine, b"Q c ft tt ttl") == b"30"
    session.legs[Side.B].rtp.fast_count += 1  # a packet now resets the timer to -T
    assert run(engine, b"Q c ft tt ttl") == b"60"
    engine.sweep(31.0)
    assert run(engine, b"Q c ft tt ttl") == b"59"


def test_slow_path_packets_reset_the_timer_too() -> None:
    engine = make_engine(ttl=2)
    session = _complete(engine)
    for t in range(1, 10):
        assert session.legs[Side.A].rtp.receive(rtp(t), ("10.0.0.6", 6000), t - 0.5)
        engine.sweep(float(t))
    assert run(engine, b"Q c ft tt ttl") == b"1"


def test_dropped_third_party_packets_do_not_keep_the_session_alive() -> None:
    engine = make_engine(ttl=2)
    session = _complete(engine)
    caller = session.legs[Side.B].rtp
    caller.receive(rtp(1, ssrc=1), ("10.0.0.5", 4000), 0.1)
    for t in range(1, 4):
        assert caller.receive(rtp(t, ssrc=2), ("192.0.2.66", 1), t - 0.5) is None
        engine.sweep(float(t))
    assert run(engine, b"Q c ft tt") == b"E50"


def test_packets_to_an_incomplete_session_do_not_keep_it_alive() -> None:
    engine = make_engine(ttl=10, setup_ttl=1)
    run(engine, b"U c 10.0.0.5 4000 ft")
    leg = _session(engine).legs[Side.A]
    for t in (1, 2):
        leg.rtp.receive(rtp(t), ("10.0.0.6", 6000), t - 0.5)
        engine.sweep(float(t))
    assert run(engine, b"Q c ft") == b"E50"


def test_unified_timer_one_direction_keeps_both() -> None:
    engine = make_engine(ttl=3)
    session = _complete(engine)
    for t in range(1, 10):
        session.legs[Side.A].rtp.fast_count += 1
        engine.sweep(float(t))
    assert [leg.ttl for leg in session.legs] == [2, 2]


def test_independent_timers() -> None:
    engine = make_engine(ttl=3, independent_timers=True)
    session = _complete(engine)
    # only the callee talks: the caller's direction runs out
    seen = []
    for t in range(1, 6):
        session.legs[Side.A].rtp.fast_count += 1
        engine.sweep(float(t))
        seen.append(run(engine, b"Q c ft tt ttl"))
    assert seen == [b"2", b"1", b"0", b"E50", b"E50"]
    # both talking: it stays
    engine = make_engine(ttl=3, independent_timers=True)
    session = _complete(engine)
    for t in range(1, 10):
        session.legs[Side.A].rtp.fast_count += 1
        session.legs[Side.B].rtcp.fast_count += 1  # RTCP counts as activity too
        engine.sweep(float(t))
    assert run(engine, b"Q c ft tt ttl") == b"2"


def test_timeout_notification() -> None:
    engine = make_engine(ttl=2, setup_ttl=1, notify_targets=(NS, "tcp:%%CC_SELF%%:9999"))
    run(engine, b"U c 10.0.0.5 4000 ft tt /var/run/ns.sock tag%20one")
    run(engine, b"L c 10.0.0.6 6000 ft tt")
    ctx = RequestContext(source_host="192.0.2.10")
    run(engine, b"U d 10.0.0.5 4000 ft tcp:%%CC_SELF%%:9999 tag_two", 0.0, ctx)
    notes: list[Notification] = []
    for t in range(1, 5):
        notes += engine.sweep(float(t))
    assert sorted(notes, key=lambda n: n.tag) == [
        Notification(
            target=NotifyTarget.parse(NS), tag=b"tag one", source_host="127.0.0.1", call_id=b"c"
        ),
        Notification(
            target=NotifyTarget.parse("tcp:%%CC_SELF%%:9999"),
            tag=b"tag_two",
            source_host="192.0.2.10",
            call_id=b"d",
        ),
    ]
    assert run(engine, b"G nsess_timeout nsess_destroyed nsess_created") == b"2 2 2"
    assert run(engine, b"I").startswith(b"sessions created: 2\nactive sessions: 0\n")


def test_incomplete_timeout_notifies_too() -> None:
    engine = make_engine(ttl=5, setup_ttl=1, notify_targets=(NS,))
    run(engine, b"U c 10.0.0.5 4000 ft unix:/var/run/ns.sock %41b")
    assert engine.sweep(1.0) == []
    assert engine.sweep(2.0) == [
        Notification(
            target=NotifyTarget.parse(NS), tag=b"Ab", source_host="127.0.0.1", call_id=b"c"
        )
    ]


def test_latest_u_decides_the_notification() -> None:
    engine = make_engine(ttl=1, notify_targets=(NS,))
    run(engine, b"U c 10.0.0.5 4000 ft ns.sock x")  # unknown target: ignored, U succeeds
    run(engine, b"U d 10.0.0.5 4000 ft /var/run/ns.sock y")
    run(engine, b"U d 10.0.0.5 4000 ft")  # no notify args: cancelled
    run(engine, b"U e 10.0.0.5 4000 ft /var/run/ns.sock z")
    notes = engine.sweep(1.0) + engine.sweep(2.0)
    assert [n.tag for n in notes] == [b"z"]
    assert run(engine, b"G nsess_timeout") == b"3"


def test_d_and_x_never_notify() -> None:
    engine = make_engine(ttl=1, notify_targets=(NS,))
    run(engine, b"U c 10.0.0.5 4000 ft /var/run/ns.sock a")
    run(engine, b"U d 10.0.0.5 4000 ft /var/run/ns.sock b")
    run(engine, b"U e 10.0.0.5 4000 ft /var/run/ns.sock c")
    assert run(engine, b"D c ft") == b"0"
    assert run(engine, b"X") == b"0"
    assert engine.sweep(1.0) == [] and engine.sweep(2.0) == []
    assert run(engine, b"G nsess_timeout nsess_destroyed") == b"0 3"


def test_weak_session_still_times_out() -> None:
    engine = make_engine(ttl=1)
    run(engine, b"Uw c 10.0.0.5 4000 ft")
    assert run(engine, b"D c ft") == b"0"
    engine.sweep(1.0)
    engine.sweep(2.0)
    assert run(engine, b"Q c ft") == b"E50"
    assert run(engine, b"G nsess_timeout") == b"1"
