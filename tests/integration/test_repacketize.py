"""``z<ms>`` on a real relay with real RTP (media-features.md §4): the re-cut packets
arrive with the same audio, other payload types and the other direction are untouched,
the G counters move, a UDP copy carries what was sent, and a plain U stops it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from pyrtpproxy.media.record import read_file

from .conftest import Party, Relay, RelayFactory, parse_port, rtp_packet, wait_for
from .test_relay import Call, relay_ok

PartyFactory = Callable[..., Party]
COUNTERS = "npkts_resizer_in npkts_resizer_out npkts_resizer_discard"


def _call(relay: Relay, call_id: str, caller: Party, callee: Party, u_mods: str) -> Call:
    a = parse_port(relay.cmd(f"U{u_mods} {call_id} 127.0.0.1 {caller.port} ft"))
    b = parse_port(relay.cmd(f"L {call_id} 127.0.0.1 {callee.port} ft tt"))
    return Call(relay, call_id, caller, callee, a, b)


def _receive(party: Party, count: int) -> list[bytes]:
    got = []
    for _ in range(count):
        item = party.recv(2.0)
        assert item is not None, f"only {len(got)} of {count} packets arrived"
        got.append(item[0])
    return got


def _header(packet: bytes) -> tuple[int, int, int]:
    _first, second, seq, ts = struct.unpack_from("!BBHI", packet)
    return second & 0x7F, seq, ts


def test_20ms_pcmu_goes_out_as_60ms_packets_with_the_same_audio(
    relay: Relay, parties: PartyFactory
) -> None:
    caller, callee = parties(), parties()
    call = _call(relay, "rz1", caller, callee, "z60")
    sent = [rtp_packet(seq) for seq in range(12)]
    for packet in sent:
        caller.send(call.b, packet)
    got = _receive(callee, 4)
    assert [len(p) - 12 for p in got] == [480] * 4
    assert [_header(p) for p in got] == [(0, seq, 480 * seq) for seq in range(4)]
    assert b"".join(p[12:] for p in got) == b"".join(p[12:] for p in sent)
    assert callee.recv(0.2) is None  # nothing else
    # a dynamic payload type is relayed at once, unchanged and uncounted
    for seq in range(12, 15):
        dynamic = rtp_packet(seq, pt=96)
        caller.send(call.b, dynamic)
        assert _receive(callee, 1) == [dynamic]
    # the callee's media is not re-packetized
    for seq in range(3):
        relay_ok(callee, call.a, caller, 100 + seq, 0x55)
    assert relay.counter(*COUNTERS.split()) == [12, 4, 0]
    # Q: 15 in from the caller, 4 + 3 + 3 relayed
    assert relay.cmd("Q rz1 ft tt").split()[1:] == ["15", "3", "10", "0"]


def test_what_is_queued_when_the_call_ends_is_discarded(
    relay: Relay, parties: PartyFactory
) -> None:
    caller, callee = parties(), parties()
    call = _call(relay, "rz6", caller, callee, "z60")
    for seq in range(2):  # 40 ms: not enough for one packet
        caller.send(call.b, rtp_packet(seq))
    assert wait_for(lambda: relay.counter("npkts_resizer_in") == [2], 2.0)
    assert callee.recv(0.2) is None
    assert relay.cmd("D rz6 ft tt") == "0"
    assert relay.counter(*COUNTERS.split()) == [2, 0, 2]


def test_a_copy_of_a_re_packetized_stream_carries_the_re_packetized_packets(
    relay: Relay, parties: PartyFactory
) -> None:
    caller, callee, recorder = parties(), parties(), parties()
    call = _call(relay, "rz2", caller, callee, "z40")
    assert relay.cmd(f"C rz2 udp:127.0.0.1:{recorder.port} ft tt") == "0"
    for seq in range(8):
        caller.send(call.b, rtp_packet(seq))
    relayed = _receive(callee, 4)
    assert [len(p) - 12 for p in relayed] == [320] * 4
    assert _receive(recorder, 4) == relayed
    assert recorder.recv(0.2) is None


def test_a_recording_of_a_re_packetized_stream_holds_the_re_packetized_packets(
    relay_factory: RelayFactory, parties: PartyFactory, tmp_path: Path
) -> None:
    record = tmp_path / "rec"
    record.mkdir()
    relay = relay_factory("-r", str(record))
    caller, callee = parties(), parties()
    call = _call(relay, "rz8", caller, callee, "z40")
    assert relay.cmd("R rz8 ft tt") == "0"
    for seq in range(8):
        caller.send(call.b, rtp_packet(seq))
    relayed = _receive(callee, 4)
    assert relay.cmd("N rz8 ft tt") == "0"
    assert [r.payload for r in read_file(record / "rz8=ft.o.rtp")] == relayed


def test_a_u_without_z_restores_the_senders_packets(relay: Relay, parties: PartyFactory) -> None:
    caller, callee = parties(), parties()
    call = _call(relay, "rz3", caller, callee, "z40")
    for seq in range(4):
        caller.send(call.b, rtp_packet(seq))
    assert [len(p) for p in _receive(callee, 2)] == [332, 332]
    relay.cmd(f"U rz3 127.0.0.1 {caller.port} ft tt")
    for seq in range(4, 8):
        relay_ok(caller, call.b, callee, seq)
    assert relay.cmd("VF 20071116") == "1"


def test_z_out_of_range_is_e13(relay: Relay, parties: PartyFactory) -> None:
    caller, callee = parties(), parties()
    call = _call(relay, "rz4", caller, callee, "")
    for mods in ("z", "z0", "z1000"):
        assert relay.cmd(f"U{mods} rz5 127.0.0.1 5000 ft") == "E13"
        assert relay.cmd(f"U{mods} rz4 127.0.0.1 {caller.port} ft tt") == "E13"
    relay_ok(caller, call.b, callee, 1)  # the call is undisturbed
    assert relay.cmd("Q rz5 ft") == "E50"


def test_z_on_a_stream_already_on_the_fast_path_takes_it_back(
    relay: Relay, parties: PartyFactory
) -> None:
    caller, callee = parties(), parties()
    call = _call(relay, "rz7", caller, callee, "")
    for seq in range(5):  # latched and settled: relayed without the engine
        relay_ok(caller, call.b, callee, seq)
    assert relay.cmd(f"Uz40 rz7 127.0.0.1 {caller.port} ft tt") == str(call.a) + " 127.0.0.1"
    for seq in range(5, 9):
        caller.send(call.b, rtp_packet(seq))
    got = _receive(callee, 2)
    assert [(len(p) - 12, _header(p)[1:]) for p in got] == [(320, (5, 800)), (320, (6, 1120))]
    assert "leg B: RTP re-packetized to 40 ms" in relay.log_text()
