"""``--latching`` on a real relay: an attacker on another loopback host (127.0.0.2)
scans every port of the relay's media range before and during a call (the RTP Bleed
attack). With the default policy he receives nothing and injects nothing; with
``--latching rtpproxy`` the first source wins, as in the reference, and he does."""

from __future__ import annotations

import struct
import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import (
    Party,
    Relay,
    RelayFactory,
    free_port,
    parse_port,
    rtcp_packet,
    rtp_packet,
    wait_for,
)

PartyFactory = Callable[..., Party]
ATTACKER_HOST = "127.0.0.2"
CALLER_SSRC, CALLEE_SSRC, ATTACKER_SSRC = 0xCA11E4, 0xCA11EE, 0xBAD
SWEEPS = 20  # bounded: SWEEPS x the relay's 200 ports


def ssrc_of(packet: bytes) -> int:
    """The SSRC of an RTP packet."""
    return int(struct.unpack_from("!I", packet, 8)[0])


def sweep(attacker: Party, relay: Relay, seq: int) -> int:
    """One RTP packet to every port of the relay's media range (RTP and RTCP ports);
    returns how many were sent."""
    sent = 0
    packet = rtp_packet(seq, ATTACKER_SSRC)
    for port in range(relay.port_min, relay.port_max + 1):
        try:
            attacker.send(port, packet, host="127.0.0.1")
            sent += 1
        except (BlockingIOError, ConnectionRefusedError):
            pass  # a full buffer, or an ICMP error for an unbound port
    return sent


def received(party: Party, rtcp: bool = False) -> list[tuple[bytes, tuple[str, int]]]:
    """Everything waiting on the party's RTP (or RTCP) socket."""
    got = []
    while (item := (party.recv_rtcp(0.05) if rtcp else party.recv(0.05))) is not None:
        got.append(item)
    return got


def dropped(metrics_port: int) -> dict[str, float]:
    """``pyrtpproxy_packets_dropped_total`` by reason."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pyrtpproxy_packets_dropped_total"
    }


def call(relay: Relay, call_id: str, caller: Party, callee: Party) -> tuple[int, int]:
    """U with the caller's address, L with the callee's: (port A, port B); the callee
    sends to A, the caller to B."""
    a = parse_port(relay.cmd(f"U {call_id} 127.0.0.1 {caller.port} ft"))
    b = parse_port(relay.cmd(f"L {call_id} 127.0.0.1 {callee.port} ft tt"))
    return a, b


def talk(sender: Party, port: int, receiver: Party, seq: int, ssrc: int) -> None:
    """One RTP packet that must arrive (after whatever else is waiting)."""
    packet = rtp_packet(seq, ssrc)
    sender.send(port, packet)
    assert wait_for(lambda: any(data == packet for data, _src in received(receiver)), 1.0), (
        f"packet {seq} of {ssrc:#x} to {port} was not relayed"
    )


def test_a_scan_of_the_port_range_gets_nothing_and_injects_nothing(
    relay_factory: RelayFactory, parties: PartyFactory
) -> None:
    metrics_port = free_port()
    relay = relay_factory("--metrics-listen", f"127.0.0.1:{metrics_port}")
    caller, callee = parties(), parties()
    attacker = parties(ATTACKER_HOST)
    sweep(attacker, relay, 0)  # before the call: no session has a port yet
    a, b = call(relay, "scan1", caller, callee)
    assert sweep(attacker, relay, 1) > 0  # the call's ports are in the range now
    # (loopback may reorder packets of two senders: wait until the relay has seen these)
    assert wait_for(lambda: relay.log_text().count("session learning:") == 4, 3.0)
    # the phones speak; the scan goes on in between
    callee_got: list[bytes] = []
    caller_got: list[bytes] = []
    callee_rtcp: list[bytes] = []
    caller_rtcp: list[bytes] = []

    def collect() -> int:
        """Read what the phones got; how many of each kind every one has by now."""
        for got, party, rtcp in (
            (callee_got, callee, False),
            (caller_got, caller, False),
            (callee_rtcp, callee, True),
            (caller_rtcp, caller, True),
        ):
            got += [data for data, _src in received(party, rtcp)]
        return min(map(len, (callee_got, caller_got, callee_rtcp, caller_rtcp)))

    def heard(count: int) -> bool:
        return wait_for(lambda: collect() >= count, 2.0)

    for seq in range(SWEEPS):
        caller.send(b, rtp_packet(100 + seq, CALLER_SSRC))
        callee.send(a, rtp_packet(500 + seq, CALLEE_SSRC))
        caller.send_rtcp(b + 1, rtcp_packet(CALLER_SSRC))
        callee.send_rtcp(a + 1, rtcp_packet(CALLEE_SSRC))
        assert heard(seq + 1), f"packets {seq} of the phones were not relayed"
        sweep(attacker, relay, 2 + seq)
    # the scan's packets were all refused: counted by reason, reported once per stream
    assert wait_for(lambda: dropped(metrics_port)["foreign_source"] == 4 * SWEEPS, 3.0)
    assert dropped(metrics_port)["learning"] == 4  # the sweep before the phones spoke
    assert relay.log_text().count("session source-refused:") == 4
    # two-way audio from the first packet on, and only the real party's
    collect()
    assert callee_got == [rtp_packet(100 + seq, CALLER_SSRC) for seq in range(SWEEPS)]
    assert caller_got == [rtp_packet(500 + seq, CALLEE_SSRC) for seq in range(SWEEPS)]
    assert callee_rtcp == [rtcp_packet(CALLER_SSRC)] * SWEEPS
    assert caller_rtcp == [rtcp_packet(CALLEE_SSRC)] * SWEEPS
    # and the attacker heard nothing, on RTP or RTCP
    assert received(attacker) == [] and received(attacker, rtcp=True) == []
    assert relay.cmd("Q scan1 ft tt npkts_ina npkts_ino") == f"{SWEEPS} {SWEEPS}"


@pytest.mark.parametrize("policy", ["safe", "rtpproxy"])
def test_a_scan_that_reaches_a_silent_leg_first(
    relay_factory: RelayFactory, parties: PartyFactory, policy: str
) -> None:
    """The callee speaks first; a scan reaches the caller's port before the caller does.
    rtpproxy's rules give that port to the scanner: he hears the callee and talks to
    her. The safe policy holds his packets until the caller speaks."""
    relay = relay_factory("--latching", policy)
    caller, callee = parties(), parties()
    attacker = parties(ATTACKER_HOST)
    a, b = call(relay, "scan2", caller, callee)
    talk(callee, a, caller, 500, CALLEE_SSRC)
    sweep(attacker, relay, 1)
    # (loopback may reorder packets of two senders: wait until the relay has seen these)
    seen = "latched: " if policy == "rtpproxy" else "learning: "
    assert wait_for(lambda: f"{seen}call-id='scan2' tag='ft' leg B RTP" in relay.log_text(), 3.0)
    callee.send(a, rtp_packet(501, CALLEE_SSRC))
    caller.send(b, rtp_packet(100, CALLER_SSRC))
    time.sleep(0.3)
    attacker_got = {ssrc_of(data) for data, _src in received(attacker)}
    callee_got = {ssrc_of(data) for data, _src in received(callee)}
    caller_got = {ssrc_of(data) for data, _src in received(caller)}
    if policy == "rtpproxy":
        assert CALLEE_SSRC in attacker_got  # (and his own packets, through RTCP ports)
        assert callee_got == {ATTACKER_SSRC}  # injected; the real caller is refused
        assert caller_got == set()
    else:
        assert attacker_got == set()
        assert callee_got == {CALLER_SSRC}
        assert caller_got == {CALLEE_SSRC}


def test_a_phone_that_changes_port_on_its_nat_keeps_audio(
    relay_factory: RelayFactory, parties: PartyFactory
) -> None:
    relay = relay_factory()
    caller, rebound, callee = parties(), parties(), parties()
    a, b = call(relay, "rebind1", caller, callee)
    for seq in range(3):
        talk(caller, b, callee, seq, CALLER_SSRC)
        talk(callee, a, caller, 500 + seq, CALLEE_SSRC)
    # the NAT gives the caller's stream a new port on the same host, mid-call
    for seq in range(3, 6):
        talk(rebound, b, callee, seq, CALLER_SSRC)
        talk(callee, a, rebound, 500 + seq, CALLEE_SSRC)
    assert received(caller) == []
    assert "re-latched" in relay.log_text()


def test_a_source_the_sdp_does_not_name_is_learned_after_the_window(
    relay_factory: RelayFactory, parties: PartyFactory
) -> None:
    """A callee with an unknown address (0.0.0.0) and a caller whose SDP names a host its
    media does not come from (a private address without fix_nated_sdp): both are
    learned once the window has passed, and the call has two-way audio."""
    relay = relay_factory("--latching-window", "100")
    caller, callee = parties(), parties()
    a = parse_port(relay.cmd(f"U learn2 127.0.0.3 {caller.port} ft"))  # nobody there
    b = parse_port(relay.cmd("L learn2 0.0.0.0 0 ft tt"))
    started = time.monotonic()
    caller_got: list[tuple[bytes, tuple[str, int]]] = []
    callee_got: list[tuple[bytes, tuple[str, int]]] = []
    seq = 0
    while not (caller_got and callee_got):  # 20 ms packets, as a phone sends them
        assert time.monotonic() - started < 3.0, "no audio after 3 s"
        caller.send(b, rtp_packet(seq, CALLER_SSRC))
        callee.send(a, rtp_packet(seq, CALLEE_SSRC))
        seq += 1
        time.sleep(0.02)
        caller_got += received(caller)
        callee_got += received(callee)
    assert time.monotonic() - started >= 0.1  # the first 100 ms were held back
    assert {ssrc_of(data) for data, _src in callee_got} == {CALLER_SSRC}
    assert callee_got[0][1] == ("127.0.0.1", a)
    assert "session learning:" in relay.log_text()
    assert "(learning window passed)" in relay.log_text()
