"""P and S on a real relay with real RTP (media-features.md §3): the prompt's bytes
arrive in order with the right header, the other party is muted and counted, a loop
runs until S, and other calls are not disturbed."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Party, Relay, rtp_packet
from .test_relay import Call, relay_ok, setup_call

PartyFactory = Callable[..., Party]

PROMPT = bytes((i * 7) & 0xFF for i in range(1600))  # 20 packets of 10 ms PCMA


def _prompt(tmp_path: Path, name: str = "pr", pt: int = 8, data: bytes = PROMPT) -> str:
    (tmp_path / f"{name}.{pt}").write_bytes(data)
    return str(tmp_path / name)


def _header(packet: bytes) -> tuple[int, int, int, int, int]:
    """(first byte, marker, pt, seq, ssrc)."""
    first, second, seq, _ts, ssrc = struct.unpack("!BBHII", packet[:12])
    return first, second >> 7, second & 0x7F, seq, ssrc


def _collect(party: Party, count: int, timeout: float) -> list[tuple[bytes, tuple[str, int]]]:
    got: list[tuple[bytes, tuple[str, int]]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        item = party.recv(0.05)
        if item is not None:
            got.append(item)
    return got


def _settle(call: Call) -> None:
    """Both directions relayed a few times: the fast path holds both."""
    for seq in range(3):
        relay_ok(call.caller, call.b, call.callee, seq)
        relay_ok(call.callee, call.a, call.caller, 100 + seq, 0x55)


def test_the_caller_hears_the_prompt_and_the_callee_is_muted(
    relay: Relay, parties: PartyFactory, tmp_path: Path
) -> None:
    prompt = _prompt(tmp_path)
    call = setup_call(relay, "pl1", parties(), parties())
    other = setup_call(relay, "pl2", parties(), parties())
    _settle(call)
    _settle(other)
    discard0, relayed0 = relay.counter("npkts_discard", "npkts_relayed")
    assert relay.cmd(f"P pl1 {prompt} 8 ft tt") == "0"
    for seq in range(10):  # the callee talks while the prompt plays: muted
        call.callee.send(call.a, rtp_packet(200 + seq, 0x55))
        relay_ok(other.caller, other.b, other.callee, 10 + seq)  # another call goes on
        relay_ok(other.callee, other.a, other.caller, 110 + seq, 0x55)
    got = _collect(call.caller, 20, 3.0)
    assert call.caller.recv(0.3) is None  # nothing after the prompt's 20 packets
    assert len(got) == 20
    assert {src for _data, src in got} == {("127.0.0.1", call.b)}  # out of leg B's port
    headers = [_header(data) for data, _src in got]
    assert {(h[0], h[2], h[4]) for h in headers} == {(0x80, 8, headers[0][4])}
    assert [h[1] for h in headers] == [1] + [0] * 19
    assert [(h[3] - headers[0][3]) & 0xFFFF for h in headers] == list(range(20))
    assert b"".join(data[12:] for data, _src in got) == PROMPT
    # the listener's own media still reached the callee during the prompt
    relay_ok(call.caller, call.b, call.callee, 50)
    assert relay.counter("npkts_discard")[0] == discard0 + 10
    stats = relay.cmd("Q pl1 ft tt").split()
    assert int(stats[4]) == 10  # ndropped
    played, created, destroyed = relay.counter("npkts_played", "nplrs_created", "nplrs_destroyed")
    assert (played, created, destroyed) == (20, 1, 1)
    assert relay.counter("npkts_relayed")[0] == relayed0 + 20 + 1  # prompt packets excluded
    relay_ok(call.callee, call.a, call.caller, 300, 0x55)  # the mute is lifted
    relayed = relay.counter("npkts_relayed")[0]
    assert f"packets transmitted: {relayed + 20}" in relay.cmd("I")


def test_a_loop_plays_until_s_and_the_call_resumes(
    relay: Relay, parties: PartyFactory, tmp_path: Path
) -> None:
    prompt = _prompt(tmp_path, "short", 0, bytes(range(200)) * 4)  # 10 packets of PCMU
    call = setup_call(relay, "loop1", parties(), parties())
    _settle(call)
    assert relay.cmd(f"P-1 loop1 {prompt} 0 ft tt") == "0"
    got = _collect(call.caller, 35, 3.0)
    assert len(got) == 35  # more than three plays of the file
    assert b"".join(data[12:] for data, _src in got[:30]) == (bytes(range(200)) * 4) * 3
    seqs = [_header(data)[3] for data, _src in got]
    assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(35)]
    assert relay.cmd("S loop1 ft tt") == "0"
    call.caller.drain(0.1)
    assert call.caller.recv(0.3) is None  # stopped
    relay_ok(call.callee, call.a, call.caller, 400, 0x55)  # unmuted at once
    assert relay.counter("nplrs_created", "nplrs_destroyed") == [1, 1]


def test_a_listener_without_an_address_hears_it_after_its_first_packet(
    relay: Relay, parties: PartyFactory, tmp_path: Path
) -> None:
    prompt = _prompt(tmp_path)
    caller, callee = parties(), parties()
    relay.cmd("U wait1 0.0.0.0 9 ft")
    b = int(relay.cmd(f"L wait1 127.0.0.1 {callee.port} ft tt").split()[0])
    assert relay.cmd(f"P wait1 {prompt} 8 ft tt") == "0"
    assert caller.recv(0.3) is None
    # the caller's packets tell the relay its address (nothing was signalled, so under
    # --latching safe once its learning window has passed, 200 ms)
    for seq in range(15):
        caller.send(b, rtp_packet(seq))
        time.sleep(0.02)
    got = _collect(caller, 20, 3.0)
    assert len(got) == 20 and b"".join(d[12:] for d, _s in got) == PROMPT


def test_play_errors_leave_the_call_alone(
    relay: Relay, parties: PartyFactory, tmp_path: Path
) -> None:
    prompt = _prompt(tmp_path)
    call = setup_call(relay, "err1", parties(), parties())
    assert relay.cmd(f"P err1 {prompt} 0,18 ft tt") == "E60"
    assert relay.cmd(f"P err1 {prompt} session ft tt") == "E35"
    assert relay.cmd(f"Px err1 {prompt} 8 ft tt") == "E17"
    assert relay.cmd(f"P nosuch {prompt} 8 ft tt") == "E50"
    relay_ok(call.caller, call.b, call.callee, 1)
    relay_ok(call.callee, call.a, call.caller, 2, 0x55)
    assert "command b'P err1" in relay.log_text()  # the operator sees which P failed


def test_a_type_it_cannot_send_mutes_until_s(
    relay: Relay, parties: PartyFactory, tmp_path: Path
) -> None:
    prompt = _prompt(tmp_path, "odd", 96, bytes(800))
    call = setup_call(relay, "odd1", parties(), parties())
    _settle(call)
    assert relay.cmd(f"P odd1 {prompt} 96 ft tt") == "0"
    call.callee.send(call.a, rtp_packet(500, 0x55))
    assert call.caller.recv(0.3) is None  # no prompt packets, and the callee is muted
    assert relay.cmd("S odd1 ft tt") == "0"
    relay_ok(call.callee, call.a, call.caller, 501, 0x55)
