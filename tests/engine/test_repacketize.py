"""``z<ms>`` in U/L on the engine (media-features.md §4.1, §4.4): which party's RTP is
re-packetized, replacement and removal by later U/L, what the slow path is told to
send, and the G/Q counters, on a fake clock."""

from __future__ import annotations

from pyrtpproxy.engine.engine import Engine, Forwarding
from pyrtpproxy.engine.events import ResizerChanged
from pyrtpproxy.engine.session import Session, Side, Stream

from .support import harness, make_engine, rtcp, rtp, run

CALLER = ("127.0.0.1", 5000)
CALLEE = ("127.0.0.1", 5002)


def _call(engine: Engine, u: bytes = b"U", l_: bytes = b"L", call: bytes = b"z1") -> Session:
    assert run(engine, b"%s %s 127.0.0.1 5000 ft" % (u, call)).split()[0].isdigit()
    assert run(engine, b"%s %s 127.0.0.1 5002 ft tt" % (l_, call)).split()[0].isdigit()
    return next(s for s in engine.table if s.call_id == call)


def _g(engine: Engine) -> list[int]:
    names = b"npkts_resizer_in npkts_resizer_out npkts_resizer_discard"
    return [int(v) for v in run(engine, b"G " + names).split()]


def _send(engine: Engine, stream: Stream, seqs: range, src: tuple[str, int]) -> list[Forwarding]:
    return [engine.receive(stream, rtp(seq), src, seq * 0.02) for seq in seqs]


def _changes(engine: Engine) -> list[tuple[Side, int | None]]:
    return [
        (e.leg.side, e.target_ms) for e in harness(engine).take() if isinstance(e, ResizerChanged)
    ]


def test_u_z_re_packetizes_the_callers_media_only() -> None:
    engine = make_engine()
    session = _call(engine, u=b"Uz60")
    caller, callee = session.legs[Side.B].rtp, session.legs[Side.A].rtp
    assert caller.resizer is not None and callee.resizer is None
    sent = _send(engine, caller, range(6), CALLER)
    assert [f.packets is not None and len(f.packets) for f in sent] == [0, 0, 1, 0, 0, 1]
    assert all(f.dest == CALLEE and not f.settled and f.accepted for f in sent)
    (first,) = sent[2].packets or ()
    assert first[12:] == bytes(480) and first[2:4] == b"\x00\x00"  # seq of the first queued
    # the other direction is relayed as it came and may take the fast path
    back = engine.receive(callee, rtp(1, ssrc=5), CALLEE, 0.5)
    assert back.packets is None and back.settled
    assert _g(engine) == [6, 2, 0]
    assert run(engine, b"Q z1 ft tt").split()[1:] == [b"6", b"1", b"3", b"0"]


def test_l_z_re_packetizes_the_callees_media() -> None:
    engine = make_engine()
    session = _call(engine, l_=b"Lz40")
    assert session.legs[Side.A].rtp.resizer is not None
    assert session.legs[Side.B].rtp.resizer is None
    assert session.legs[Side.A].rtcp.resizer is None  # RTCP is never re-packetized


def test_rtcp_and_pass_through_packets_are_not_counted() -> None:
    engine = make_engine()
    session = _call(engine, u=b"Uz40")
    caller = session.legs[Side.B]
    report = engine.receive(caller.rtcp, rtcp(), ("127.0.0.1", 5001), 0.1)
    assert report.packets is None and report.settled
    event = engine.receive(caller.rtp, rtp(1, pt=101), CALLER, 0.1)
    assert event.packets == (rtp(1, pt=101),)
    assert _g(engine) == [0, 0, 0]


def test_each_u_for_the_party_replaces_the_setting_and_one_without_z_removes_it() -> None:
    engine = make_engine()
    session = _call(engine, u=b"Uz60")
    caller = session.legs[Side.B].rtp
    assert _changes(engine) == [(Side.B, 60)]
    _send(engine, caller, range(2), CALLER)  # 40 ms queued
    resizer = caller.resizer
    run(engine, b"Uz20 z1 127.0.0.1 5000 ft tt")
    assert caller.resizer is resizer and resizer is not None and resizer.target_ms == 20
    assert _changes(engine) == [(Side.B, 20)]
    run(engine, b"Uz20 z1 127.0.0.1 5000 ft tt")  # the same again: nothing to tell
    assert _changes(engine) == []
    run(engine, b"L z1 127.0.0.1 5002 ft tt")  # the callee's SDP: the caller's setting stays
    assert caller.resizer is resizer
    run(engine, b"U z1 127.0.0.1 5000 ft tt")
    assert caller.resizer is None
    assert _changes(engine) == [(Side.B, None)]
    assert _g(engine) == [2, 0, 2]  # the two queued packets were discarded
    # back to plain relaying: the next packet settles the stream again
    (plain,) = _send(engine, caller, range(2, 3), CALLER)
    assert plain.packets is None and plain.settled


def test_a_resizer_unsettles_a_settled_stream() -> None:
    engine = make_engine()
    session = _call(engine)
    caller = session.legs[Side.B].rtp
    (first,) = _send(engine, caller, range(1), CALLER)
    assert first.settled
    harness(engine).take()
    run(engine, b"Uz40 z1 127.0.0.1 5000 ft tt")
    # the media layer takes the stream off its fast path and out of the kernel on this
    assert _changes(engine) == [(Side.B, 40)]
    assert not caller.settled(CALLER)


def test_delete_discards_what_is_queued() -> None:
    engine = make_engine()
    session = _call(engine, u=b"Uz60")
    _send(engine, session.legs[Side.B].rtp, range(2), CALLER)
    assert run(engine, b"D z1 ft tt") == b"0"
    assert _g(engine) == [2, 0, 2]


def test_a_late_packet_is_counted_in_and_discarded() -> None:
    engine = make_engine()
    session = _call(engine, u=b"Uz20")
    caller = session.legs[Side.B].rtp
    _send(engine, caller, range(3), CALLER)
    late = engine.receive(caller, rtp(1), CALLER, 0.1)
    assert late.packets == () and late.accepted
    assert _g(engine) == [4, 3, 1]


def test_output_while_the_other_party_is_unknown_is_not_counted_as_relayed() -> None:
    engine = make_engine()
    run(engine, b"Uz20 z2 127.0.0.1 5000 ft")
    run(engine, b"L z2 0.0.0.0 5002 ft tt")  # the callee's address is not known yet
    session = next(iter(engine.table))
    (sent,) = _send(engine, session.legs[Side.B].rtp, range(1), CALLER)
    assert sent.dest is None and sent.accepted and sent.packets is not None
    assert len(sent.packets) == 1  # recorded as re-packetized, but not relayed
    assert _g(engine) == [1, 0, 0]


def test_z_out_of_range_is_e13_and_other_calls_go_on() -> None:
    engine = make_engine()
    session = _call(engine, u=b"Uz60")
    for mods in (b"z", b"z0", b"z1000"):
        assert run(engine, b"U%s z9 127.0.0.1 5000 ft" % mods) == b"E13"
        assert run(engine, b"U%s z1 127.0.0.1 5000 ft tt" % mods) == b"E13"
    assert len(engine.table) == 1
    caller = session.legs[Side.B].rtp
    assert caller.resizer is not None and caller.resizer.target_ms == 60
    assert run(engine, b"VF 20071116") == b"1"
