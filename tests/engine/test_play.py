"""P and S in the engine (media-features.md §3): the verified request → reply lines, the
leg a prompt goes to, the codec list, muting and the counters, on a fake clock."""

from __future__ import annotations

import struct

import pytest

from pyrtpproxy.engine.engine import Engine
from pyrtpproxy.engine.events import PlayerCreated, PlayerEnded, PlayerStarted
from pyrtpproxy.engine.playback import PlayEnd
from pyrtpproxy.engine.session import Session, Side

from .support import FakeHost, harness, make_engine, rtp, run

PROMPTS = {b"pr.0": bytes(range(256)) * 4, b"pr.8": b"\xd5" * 800, b"pr.96": bytes(500)}


def _engine() -> Engine:
    host = FakeHost()
    host.prompts.update(PROMPTS)
    return make_engine(host=host)


def _call(engine: Engine, call: bytes, mods: bytes = b"", lmods: bytes = b"") -> Session:
    run(engine, b"U%s %s 127.0.0.1 5000 ft" % (mods, call))
    run(engine, b"L%s %s 127.0.0.1 5002 ft tt" % (lmods, call))
    return next(s for s in engine.table if s.call_id == call)


def _events(engine: Engine, kind: type) -> list[object]:
    return [e for e in harness(engine).take() if isinstance(e, kind)]


def _payload_type(packet: bytes) -> int:
    return packet[1] & 0x7F


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"Px pl1 pr 0 ft tt", b"E17"),
        (b"P2x pl1 pr 0 ft tt", b"E17"),
        (b"P- pl1 pr 0 ft tt", b"E17"),
        (b"P pl1 pr 0 nosuch", b"E50"),
        (b"P s1 pq 0 ft;1 tt;1", b"E50"),
        (b"P pl2 pr session ft tt", b"E35"),
        (b"P pl1 nosuch 0 ft tt", b"E60"),
        (b"P pl1 pr 3,18 ft tt", b"E60"),
        (b"P pl1 pr abc ft tt", b"E60"),
        (b"P pl1 pr 96,0 ft tt", b"0"),
        (b"P pl1 pr 0,abc ft tt", b"0"),  # the list is tried in order: pr.0 is found first
        (b"P0 pl1 pr 0 ft tt", b"0"),
        (b"P3 pl1 pr 0 ft tt", b"0"),
        (b"P+2 pl1 pr 0 ft tt", b"0"),
        (b"P-1 pl1 pr 0 ft tt", b"0"),
        (b"P-2 pl1 pr 0 ft tt", b"0"),
        (b"P pl1 pr 0 ft tt && S ttl=5", b"E3"),
        (b"P pl1 pr 0", b"E1"),
        (b"S nosuch ft tt", b"E50"),
        (b"S pl1 ft tt", b"0"),  # nothing plays: still 0
        (b"Sx pl1 ft tt", b"E2"),
        (b"S pl1", b"E1"),
        (b"S pl1 ft tt extra", b"E1"),
    ],
)
def test_verified_replies(command: bytes, reply: bytes) -> None:
    engine = _engine()
    _call(engine, b"pl1")
    _call(engine, b"pl2")
    _call(engine, b"s1")
    assert run(engine, command) == reply


def test_the_prompt_goes_to_tag1s_party_out_of_its_leg() -> None:
    engine = _engine()
    session = _call(engine, b"pl1")
    harness(engine).take()
    assert run(engine, b"P pl1 pr 0 ft tt") == b"0"
    (created,) = _events(engine, PlayerCreated)
    assert isinstance(created, PlayerCreated)
    assert created.player.leg is session.legs[Side.B]  # the caller (ft) hears it
    assert created.prompt == b"pr.0"
    sends, _ = engine.handle_play_timer(harness(engine).clock.now)
    assert [stream for stream, _ in sends] == [session.legs[Side.B].rtp]
    assert sends[0][1][12:] == PROMPTS[b"pr.0"][:80]
    assert run(engine, b"P pl1 pr 8 tt ft") == b"0"  # the callee hears this one
    assert session.legs[Side.A].player is not None
    assert session.legs[Side.B].player is not None  # both legs can play at once


def test_the_codec_list_is_tried_in_order() -> None:
    engine = _engine()
    session = _call(engine, b"pl1")
    assert run(engine, b"P pl1 pr 3,8,0 ft tt") == b"0"
    player = session.legs[Side.B].player
    assert player is not None and player.payload_type == 8
    sends, _ = engine.handle_play_timer(0.0)
    assert _payload_type(sends[0][1]) == 8


def test_session_uses_the_listeners_list_and_the_other_partys_z() -> None:
    engine = _engine()
    session = _call(engine, b"pl1", mods=b"c8,0", lmods=b"z30c0")
    assert run(engine, b"P pl1 pr session ft tt") == b"0"
    sends, _ = engine.handle_play_timer(0.0)
    assert _payload_type(sends[0][1]) == 8 and len(sends[0][1]) == 12 + 240  # 30 ms
    assert run(engine, b"P pl1 pr 8 ft tt") == b"0"  # an explicit list: 10 ms
    sends, _ = engine.handle_play_timer(0.0)
    assert len(sends[0][1]) == 12 + 80
    assert run(engine, b"P pl1 pr session tt ft") == b"0"  # callee: its own c0, no z
    player = session.legs[Side.A].player
    assert player is not None and player.payload_type == 0 and player.packet_ms == 10
    run(engine, b"L pl1 127.0.0.1 5002 ft tt")  # no c: the callee's list is gone
    assert run(engine, b"P pl1 pr session tt ft") == b"E35"
    assert run(engine, b"P0 pl1 pr session tt ft") == b"E35"  # checked before the count


def test_unreadable_prompt_is_e60_and_the_call_goes_on() -> None:
    engine = _engine()
    harness(engine).host.unreadable.add(b"pr.0")
    _call(engine, b"pl1")
    assert run(engine, b"P pl1 pr 0,8 ft tt") == b"E60"  # not "missing": no fallback
    assert run(engine, b"G ncmds_errs nplrs_created") == b"1 0"


def test_every_p_first_stops_the_legs_player() -> None:
    engine = _engine()
    session = _call(engine, b"pl1")
    leg = session.legs[Side.B]
    run(engine, b"P-1 pl1 pr 0 ft tt")
    first = leg.player
    harness(engine).take()
    run(engine, b"P pl1 pr 8 ft tt")
    assert leg.player is not None and leg.player is not first
    (ended,) = _events(engine, PlayerEnded)
    assert isinstance(ended, PlayerEnded)
    assert ended.player is first and ended.reason is PlayEnd.STOPPED
    run(engine, b"P pl1 nosuch 0 ft tt")  # E60, but what played has stopped
    assert leg.player is None
    run(engine, b"P pl1 pr 0 ft tt")
    assert run(engine, b"P0 pl1 pr 0 ft tt") == b"0"
    assert leg.player is None
    run(engine, b"P pl1 pr 0 ft tt")
    assert run(engine, b"S pl1 ft tt") == b"0"
    assert leg.player is None and len(engine.players) == 0
    assert engine.get_play_timer() is None
    assert run(engine, b"G nplrs_created nplrs_destroyed") == b"4 4"


def test_the_other_party_is_muted_while_the_prompt_plays() -> None:
    engine = _engine()
    session = _call(engine, b"pl1")
    caller_leg, callee_leg = session.legs[Side.B], session.legs[Side.A]
    callee = ("127.0.0.1", 5002)
    caller = ("127.0.0.1", 5000)
    assert engine.receive(callee_leg.rtp, rtp(1), callee, 0.0).dest is not None
    run(engine, b"P pl1 pr 0 ft tt")
    for seq in range(2, 6):
        forwarding = engine.receive(callee_leg.rtp, rtp(seq), callee, 0.1)
        assert forwarding.dest is None and not forwarding.settled
        assert not forwarding.accepted  # neither recorded nor copied
    assert not callee_leg.rtp.settled(callee)
    # the listener's own media still reaches the other party, RTCP is not muted
    assert engine.receive(caller_leg.rtp, rtp(1), caller, 0.1).dest is not None
    assert engine.receive(callee_leg.rtcp, rtp(1), ("127.0.0.1", 5003), 0.1).dest is not None
    assert run(engine, b"Q pl1 ft tt") == b"61 1 5 2 4"  # RTP only: 2 relayed, 4 muted
    assert run(engine, b"G npkts_discard npkts_relayed") == b"4 3"
    assert run(engine, b"S pl1 ft tt") == b"0"  # the mute lifts at once
    forwarding = engine.receive(callee_leg.rtp, rtp(6), callee, 0.2)
    assert forwarding.dest is not None and forwarding.settled


def test_prompt_packets_count_as_played_not_relayed() -> None:
    engine = _engine()
    _call(engine, b"pl1")
    run(engine, b"P pl1 pr 0 ft tt")
    total = 0
    while (deadline := engine.get_play_timer()) is not None:
        sends, events = engine.handle_play_timer(deadline)
        total += len(sends)
    assert total == 12  # 1024 bytes: 12 packets of 80, the last 64 bytes dropped
    assert [e.reason for e in events if isinstance(e, PlayerEnded)] == [PlayEnd.FINISHED]
    assert run(engine, b"G npkts_played npkts_relayed nplrs_created nplrs_destroyed") == (
        b"12 0 1 1"
    )
    assert b"packets transmitted: 12" in run(engine, b"I")


def test_the_session_ending_stops_its_players() -> None:
    engine = _engine()
    session = _call(engine, b"pl1")
    other = _call(engine, b"pl2")
    run(engine, b"P-1 pl1 pr 0 ft tt")
    run(engine, b"P-1 pl1 pr 0 tt ft")
    run(engine, b"P-1 pl2 pr 8 ft tt")
    harness(engine).take()
    assert run(engine, b"D pl1 ft tt") == b"0"
    ended = [e for e in harness(engine).take() if isinstance(e, PlayerEnded)]
    assert {e.reason for e in ended} == {PlayEnd.SESSION_ENDED} and len(ended) == 2
    assert all(leg.player is None for leg in session.legs)
    assert len(engine.players) == 1
    sends, _ = engine.handle_play_timer(0.0)
    assert [s.leg for s, _ in sends] == [other.legs[Side.B]]


def test_a_listener_without_an_address_hears_the_prompt_after_its_first_packet() -> None:
    engine = _engine()
    run(engine, b"U w1 0.0.0.0 5000 ft")  # the caller's SDP has no address yet
    run(engine, b"L w1 127.0.0.1 5002 ft tt")
    session = next(iter(engine.table))
    assert run(engine, b"P w1 pr 0 ft tt") == b"0"
    assert engine.get_play_timer() is None
    assert engine.handle_play_timer(100.0).sends == []
    listener = session.legs[Side.B].rtp
    # nothing was signalled: --latching safe learns the address after its window, and
    # the prompt starts with the packet that latches it
    for seq, at in enumerate((7.0, 7.05, 7.1)):
        forwarding = engine.receive(listener, rtp(seq), ("127.0.0.1", 6000), at)
        assert not any(isinstance(e, PlayerStarted) for e in forwarding.events)
    assert engine.get_play_timer() is None
    forwarding = engine.receive(listener, rtp(3), ("127.0.0.1", 6000), 7.25)
    assert any(isinstance(e, PlayerStarted) for e in forwarding.events)
    assert engine.get_play_timer() == 7.25
    sends, _ = engine.handle_play_timer(7.25)
    assert len(sends) == 1 and sends[0][0].remote is not None
    assert sends[0][0].remote.port == 6000


def test_a_type_without_a_packetizer_answers_0_sends_nothing_and_mutes() -> None:
    engine = _engine()
    session = _call(engine, b"pl1")
    assert run(engine, b"P pl1 pr 96 ft tt") == b"0"
    assert engine.get_play_timer() is None
    forwarding = engine.receive(session.legs[Side.A].rtp, rtp(1), ("127.0.0.1", 5002), 1.0)
    assert forwarding.dest is None
    assert run(engine, b"S pl1 ft tt") == b"0"
    assert engine.receive(session.legs[Side.A].rtp, rtp(2), ("127.0.0.1", 5002), 1.0).dest


def test_the_header_is_rtp_v2_with_the_marker_on_the_first_packet_only() -> None:
    engine = _engine()
    _call(engine, b"pl1")
    run(engine, b"P2 pl1 pr 8 ft tt")  # 800 bytes twice: 20 packets
    packets = []
    while (deadline := engine.get_play_timer()) is not None:
        packets += [p for _, p in engine.handle_play_timer(deadline).sends]
    assert len(packets) == 20
    fields = [struct.unpack("!BBHII", p[:12]) for p in packets]
    assert {f[0] for f in fields} == {0x80}
    assert [f[1] >> 7 for f in fields] == [1] + [0] * 19
    assert [(f[2] - fields[0][2]) & 0xFFFF for f in fields] == list(range(20))
