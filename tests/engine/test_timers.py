"""Idle and setup timers as deadlines, and timeout notifications (relay-behaviour.md §5, §6).

Time is only what the test passes in: commands at ``now``, packets at their arrival,
``handle_timer(now)`` when the engine's deadline comes.
"""

from __future__ import annotations

from pyrtpproxy.engine.addresses import NotifyTarget
from pyrtpproxy.engine.engine import Engine, RequestContext
from pyrtpproxy.engine.events import NotifyWanted
from pyrtpproxy.engine.session import Session, Side

from .support import expire, fast_packet, make_engine, rtp, run

NS = "unix:/var/run/ns.sock"


def _session(engine: Engine, call: bytes = b"c") -> Session:
    return next(s for s in engine.table if s.call_id == call)


def _complete(engine: Engine, call: bytes = b"c", now: float = 0.0) -> Session:
    run(engine, b"U %s 10.0.0.5 4000 ft" % call, now)
    run(engine, b"L %s 10.0.0.6 6000 ft tt" % call, now)
    return _session(engine, call)


def _ttls(engine: Engine, session: Session, now: float) -> list[int]:
    return [engine.timers.leg_remaining(leg, now) for leg in session.legs]


def test_idle_session_lives_t_plus_one_seconds() -> None:
    # -T 4 -W 2: Q showed 3,2,1,0 then E50 (verified)
    engine = make_engine(ttl=4, setup_ttl=2)
    _complete(engine)
    assert run(engine, b"Q c ft tt ttl") == b"4"
    assert engine.get_timer() == 5.0  # T + 1 after the last command
    seen = []
    for t in range(1, 6):
        assert expire(engine, float(t)) == []
        seen.append(run(engine, b"Q c ft tt ttl", float(t)))
    assert seen == [b"3", b"2", b"1", b"0", b"E50"]
    assert run(engine, b"G nsess_timeout nsess_destroyed", 5.0) == b"1 1"
    assert engine.get_timer() is None


def test_incomplete_session_uses_the_setup_timer() -> None:
    engine = make_engine(ttl=4, setup_ttl=2)
    run(engine, b"U c 10.0.0.5 4000 ft")
    assert run(engine, b"Q c ft tt ttl") == b"2"
    seen = []
    for t in range(1, 4):
        expire(engine, float(t))
        seen.append(run(engine, b"Q c ft tt ttl", float(t)))
    assert seen == [b"1", b"0", b"E50"]


def test_completion_resets_both_legs_to_t() -> None:
    engine = make_engine(ttl=4, setup_ttl=2)
    run(engine, b"U c 10.0.0.5 4000 ft")
    expire(engine, 1.0)
    assert run(engine, b"Q c ft tt ttl", 1.0) == b"1"
    run(engine, b"L c 10.0.0.6 6000 ft tt", 1.5)
    assert run(engine, b"Q c ft tt ttl", 1.5) == b"4"
    assert _ttls(engine, _session(engine), 1.5) == [4, 4]


def test_a_shorter_timer_after_completion_is_filed_earlier() -> None:
    engine = make_engine(ttl=2, setup_ttl=30)
    run(engine, b"U c 10.0.0.5 4000 ft")
    assert engine.get_timer() == 31.0
    run(engine, b"L c 10.0.0.6 6000 ft tt", 1.0)
    assert engine.get_timer() == 4.0
    assert expire(engine, 3.9) == [] and len(engine.table) == 1
    expire(engine, 4.0)
    assert run(engine, b"Q c ft", 4.0) == b"E50"


def test_u_and_l_reset_the_timer() -> None:
    engine = make_engine(ttl=4)
    _complete(engine)
    for t in range(1, 4):
        expire(engine, float(t))
    assert run(engine, b"Q c ft tt ttl", 3.0) == b"1"
    run(engine, b"U c 10.0.0.5 4000 ft tt", 3.5)
    assert run(engine, b"Q c ft tt ttl", 3.5) == b"4"
    expire(engine, 4.0)
    run(engine, b"L c 10.0.0.6 6000 ft tt", 4.5)
    assert run(engine, b"Q c ft tt ttl", 4.5) == b"4"
    expire(engine, 8.0)  # the deadline of the first U has passed; the L's has not
    assert run(engine, b"Q c ft tt ttl", 8.0) == b"1"


def test_media_activity_resets_the_timer() -> None:
    engine = make_engine(ttl=4)
    session = _complete(engine)
    caller = session.legs[Side.B].rtp
    for t in range(1, 30):
        # media path: one packet relayed per second by the fast path, in one direction
        fast_packet(caller, float(t))
        assert expire(engine, float(t)) == []
        assert run(engine, b"Q c ft tt ttl", t + 1.0) == b"3"
    # media stops: the last packet (at 29) gave it T+1 seconds
    for t in range(30, 34):
        expire(engine, float(t))
    assert run(engine, b"Q c ft tt ttl", 33.0) == b"0"
    expire(engine, 34.0)
    assert run(engine, b"Q c ft tt", 34.0) == b"E50"


def test_the_timer_is_not_touched_per_packet() -> None:
    engine = make_engine(ttl=4)
    session = _complete(engine)
    for t in range(1, 100):
        fast_packet(session.legs[Side.B].rtp, t / 10)
    # packets leave the session filed under the command's deadline ...
    assert session.timer_at == 5.0
    # ... and the timer finds the later expiry when it looks
    assert engine.get_timer() == 9.9 + 5
    assert expire(engine, 5.0) == [] and len(engine.table) == 1


def test_q_sees_a_packet_at_once() -> None:
    engine = make_engine(ttl=60)
    session = _complete(engine)
    for t in range(1, 31):
        expire(engine, float(t))
    assert run(engine, b"Q c ft tt ttl", 30.0) == b"30"
    fast_packet(session.legs[Side.B].rtp, 30.0)  # a packet now resets the timer to -T
    assert run(engine, b"Q c ft tt ttl", 30.0) == b"60"
    expire(engine, 31.0)
    assert run(engine, b"Q c ft tt ttl", 31.0) == b"59"


def test_slow_path_packets_reset_the_timer_too() -> None:
    engine = make_engine(ttl=2)
    session = _complete(engine)
    for t in range(1, 10):
        assert session.legs[Side.A].rtp.receive(rtp(t), ("10.0.0.6", 6000), t - 0.5)
        expire(engine, float(t))
    # one second after the last packet (at 8.5): T - 1 left
    assert run(engine, b"Q c ft tt ttl", 9.5) == b"1"


def test_dropped_third_party_packets_do_not_keep_the_session_alive() -> None:
    engine = make_engine(ttl=2)
    session = _complete(engine)
    caller = session.legs[Side.B].rtp
    caller.receive(rtp(1, ssrc=1), ("10.0.0.5", 4000), 0.1)
    for t in range(1, 5):  # the accepted packet at 0.1 gave it until 3.1
        assert caller.receive(rtp(t, ssrc=2), ("192.0.2.66", 1), t - 0.5) is None
        expire(engine, float(t))
    assert run(engine, b"Q c ft tt", 4.0) == b"E50"


def test_packets_to_an_incomplete_session_do_not_keep_it_alive() -> None:
    engine = make_engine(ttl=10, setup_ttl=1)
    run(engine, b"U c 10.0.0.5 4000 ft")
    leg = _session(engine).legs[Side.A]
    for t in (1, 2):
        leg.rtp.receive(rtp(t), ("10.0.0.6", 6000), t - 0.5)
        expire(engine, float(t))
    assert run(engine, b"Q c ft", 2.0) == b"E50"


def test_unified_timer_one_direction_keeps_both() -> None:
    engine = make_engine(ttl=3)
    session = _complete(engine)
    for t in range(1, 10):
        fast_packet(session.legs[Side.A].rtp, float(t))
        expire(engine, float(t))
    assert _ttls(engine, session, 10.0) == [2, 2]


def test_independent_timers() -> None:
    engine = make_engine(ttl=3, independent_timers=True)
    session = _complete(engine)
    # only the callee talks: the caller's direction runs out
    seen = []
    for t in range(1, 6):
        fast_packet(session.legs[Side.A].rtp, float(t))
        expire(engine, float(t))
        seen.append(run(engine, b"Q c ft tt ttl", float(t)))
    assert seen == [b"2", b"1", b"0", b"E50", b"E50"]
    # both talking: it stays
    engine = make_engine(ttl=3, independent_timers=True)
    session = _complete(engine)
    for t in range(1, 10):
        fast_packet(session.legs[Side.A].rtp, float(t))
        fast_packet(session.legs[Side.B].rtcp, float(t))  # RTCP counts as activity too
        expire(engine, float(t))
    assert run(engine, b"Q c ft tt ttl", 10.0) == b"2"


def test_timeout_notification() -> None:
    engine = make_engine(ttl=2, setup_ttl=1, notify_targets=(NS, "tcp:%%CC_SELF%%:9999"))
    run(engine, b"U c 10.0.0.5 4000 ft tt /var/run/ns.sock tag%20one")
    run(engine, b"L c 10.0.0.6 6000 ft tt")
    ctx = RequestContext(source_host="192.0.2.10")
    run(engine, b"U d 10.0.0.5 4000 ft tcp:%%CC_SELF%%:9999 tag_two", 0.0, ctx)
    notes: list[NotifyWanted] = []
    for t in range(1, 5):
        notes += expire(engine, float(t))
    assert sorted(notes, key=lambda n: n.tag) == [
        NotifyWanted(
            target=NotifyTarget.parse(NS), tag=b"tag one", source_host="127.0.0.1", call_id=b"c"
        ),
        NotifyWanted(
            target=NotifyTarget.parse("tcp:%%CC_SELF%%:9999"),
            tag=b"tag_two",
            source_host="192.0.2.10",
            call_id=b"d",
        ),
    ]
    assert run(engine, b"G nsess_timeout nsess_destroyed nsess_created", 5.0) == b"2 2 2"
    assert run(engine, b"I", 5.0).startswith(b"sessions created: 2\nactive sessions: 0\n")


def test_incomplete_timeout_notifies_too() -> None:
    engine = make_engine(ttl=5, setup_ttl=1, notify_targets=(NS,))
    run(engine, b"U c 10.0.0.5 4000 ft unix:/var/run/ns.sock %41b")
    assert expire(engine, 1.0) == []
    assert expire(engine, 2.0) == [
        NotifyWanted(
            target=NotifyTarget.parse(NS), tag=b"Ab", source_host="127.0.0.1", call_id=b"c"
        )
    ]


def test_latest_u_decides_the_notification() -> None:
    engine = make_engine(ttl=1, notify_targets=(NS,))
    run(engine, b"U c 10.0.0.5 4000 ft ns.sock x")  # unknown target: ignored, U succeeds
    run(engine, b"U d 10.0.0.5 4000 ft /var/run/ns.sock y")
    run(engine, b"U d 10.0.0.5 4000 ft")  # no notify args: cancelled
    run(engine, b"U e 10.0.0.5 4000 ft /var/run/ns.sock z")
    notes = expire(engine, 1.0) + expire(engine, 2.0)
    assert [n.tag for n in notes] == [b"z"]
    assert run(engine, b"G nsess_timeout", 2.0) == b"3"


def test_d_and_x_never_notify() -> None:
    engine = make_engine(ttl=1, notify_targets=(NS,))
    run(engine, b"U c 10.0.0.5 4000 ft /var/run/ns.sock a")
    run(engine, b"U d 10.0.0.5 4000 ft /var/run/ns.sock b")
    run(engine, b"U e 10.0.0.5 4000 ft /var/run/ns.sock c")
    assert run(engine, b"D c ft") == b"0"
    assert run(engine, b"X") == b"0"
    assert expire(engine, 1.0) == [] and expire(engine, 2.0) == []
    assert run(engine, b"G nsess_timeout nsess_destroyed", 2.0) == b"0 3"


def test_weak_session_still_times_out() -> None:
    engine = make_engine(ttl=1)
    run(engine, b"Uw c 10.0.0.5 4000 ft")
    assert run(engine, b"D c ft") == b"0"
    expire(engine, 1.0)
    expire(engine, 2.0)
    assert run(engine, b"Q c ft", 2.0) == b"E50"
    assert run(engine, b"G nsess_timeout", 2.0) == b"1"
