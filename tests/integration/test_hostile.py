"""Hostile media traffic: garbage, odd sizes, floods and ICMP errors must not hurt a call."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable

from .conftest import VERSION, Party, Relay, parse_port, rtcp_packet, rtp_packet, wait_for

PartyFactory = Callable[..., Party]


def _call(relay: Relay, call_id: str, caller: Party, callee: Party) -> tuple[int, int]:
    a = parse_port(relay.cmd(f"U {call_id} 127.0.0.1 {caller.port} ft"))
    b = parse_port(relay.cmd(f"L {call_id} 127.0.0.1 {callee.port} ft tt"))
    return a, b


def _good(sender: Party, port: int, receiver: Party, seq: int, ssrc: int) -> None:
    packet = rtp_packet(seq, ssrc)
    sender.send(port, packet)
    for _ in range(5):  # skip anything else that may be queued (e.g. relayed junk)
        got = receiver.recv(1.0)
        assert got is not None, f"good packet {seq} lost"
        if got[0] == packet:
            return
    raise AssertionError(f"good packet {seq} never arrived")


def _settle(relay: Relay, baseline: int) -> bool:
    return relay.fd_count() <= baseline


def test_garbage_and_odd_sizes(relay: Relay, parties: PartyFactory) -> None:
    baseline = relay.idle_fd_count()
    caller, callee, stranger = parties(), parties(), parties()
    a, b = _call(relay, "junk1", caller, callee)
    _good(caller, b, callee, 0, 0xA1)
    _good(callee, a, caller, 0, 0xB2)
    # latch both RTCP streams too (an unlatched stream would take the stranger's address)
    caller.send_rtcp(b + 1, rtcp_packet(0xA1))
    callee.send_rtcp(a + 1, rtcp_packet(0xB2))
    assert callee.recv_rtcp() is not None and caller.recv_rtcp() is not None
    rng = random.Random(7)
    junk = [b"", b"\x00", b"\xff" * 3, b"hello", b"\x80", b"\x80\x00\x00"]
    junk += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(100)]
    big = b"\x80" + b"\x00" * 65506  # 65507 bytes: largest IPv4 UDP payload
    for port in (a, b, a + 1, b + 1):
        for data in junk:
            stranger.send(port, data)
        stranger.send(port, big)
    # the latched parties themselves send garbage and jumbo datagrams too
    for data in [*junk[:20], big]:
        caller.send(b, data)
        callee.send(a, data)
    time.sleep(0.3)
    callee.drain()
    caller.drain()
    for seq in range(1, 20):
        _good(caller, b, callee, seq, 0xA1)
        _good(callee, a, caller, seq, 0xB2)
    assert stranger.recv(0.1) is None
    assert stranger.recv_rtcp(0.05) is None
    caller.send_rtcp(b + 1, rtcp_packet(0xA1))
    assert callee.recv_rtcp() == (rtcp_packet(0xA1), ("127.0.0.1", a + 1))
    assert relay.unix("V") == VERSION + "\n"
    assert relay.cmd("D junk1 ft") == "0"
    assert wait_for(lambda: _settle(relay, baseline), 3.0), (relay.fd_count(), baseline)


def test_flood_from_third_party(relay: Relay, parties: PartyFactory) -> None:
    baseline = relay.idle_fd_count()
    caller, callee, flooder = parties(), parties(), parties()
    a, b = _call(relay, "flood1", caller, callee)
    _good(caller, b, callee, 0, 0xA1)
    _good(callee, a, caller, 0, 0xB2)
    discard0 = relay.counter("npkts_discard")[0]
    flood = rtp_packet(40000, 0xF100D)
    good_sent = good_got = 0
    deadline = time.monotonic() + 20.0
    for burst in range(40):  # 40 x 500 = 20000 flood packets, bounded in time
        assert time.monotonic() < deadline, "flood took too long"
        for _ in range(250):
            try:
                flooder.send(b, flood)
                flooder.send(a, flood)
            except BlockingIOError:
                time.sleep(0.001)
        seq = 1 + burst
        caller.send(b, rtp_packet(seq, 0xA1))
        good_sent += 1
        got = callee.recv(0.5)
        while got is not None and got[0] != rtp_packet(seq, 0xA1):
            got = callee.recv(0.2)
        good_got += got is not None
    assert good_got >= good_sent * 0.9, (good_got, good_sent)
    callee.drain()
    caller.drain()
    assert flooder.recv(0.1) is None  # nothing went back to the flooder
    assert relay.counter("npkts_discard")[0] - discard0 >= 1000  # the relay did see it
    for seq in range(100, 110):
        _good(caller, b, callee, seq, 0xA1)
        _good(callee, a, caller, seq, 0xB2)
    assert relay.unix("V") == VERSION + "\n"
    assert relay.cmd("D flood1 ft") == "0"
    assert wait_for(lambda: _settle(relay, baseline), 3.0), (relay.fd_count(), baseline)


def test_icmp_port_unreachable_from_peer(relay: Relay, parties: PartyFactory) -> None:
    baseline = relay.idle_fd_count()
    caller, callee = parties(), parties()
    other_caller, other_callee = parties(), parties()
    a, b = _call(relay, "icmp1", caller, callee)
    oa, ob = _call(relay, "icmp2", other_caller, other_callee)
    for seq in range(3):
        _good(caller, b, callee, seq, 0xA1)
        _good(callee, a, caller, seq, 0xB2)
        _good(other_caller, ob, other_callee, seq, 0xC3)
    # the callee goes away: relayed packets now draw ICMP port unreachable
    callee_port = callee.port
    callee.close()
    for seq in range(3, 53):
        caller.send(b, rtp_packet(seq, 0xA1))
        if seq % 10 == 0:
            _good(other_caller, ob, other_callee, seq, 0xC3)
            _good(other_callee, oa, other_caller, seq, 0xD4)
        time.sleep(0.002)
    assert relay.unix("V") == VERSION + "\n"
    # the callee comes back on the same port: the call works again both ways
    back = Party("127.0.0.1", callee_port)
    try:
        for seq in range(60, 70):
            _good(caller, b, back, seq, 0xA1)
            _good(back, a, caller, seq, 0xB2)
    finally:
        back.close()
    assert relay.cmd("Q icmp1 ft tt npkts_ina") == "63"
    assert relay.cmd("D icmp1 ft") == "0"
    assert relay.cmd("D icmp2 ft") == "0"
    assert relay.unix("V") == VERSION + "\n"
    assert wait_for(lambda: _settle(relay, baseline), 3.0), (relay.fd_count(), baseline)
    assert os.path.exists(f"/proc/{relay.pid}")


def test_closed_socket_of_relay_peer_does_not_kill_control(relay: Relay) -> None:
    # a UDP control client that vanishes before its reply: the reply draws ICMP
    for n in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"gone{n} V".encode(), ("127.0.0.1", relay.udp_port))
    assert relay.udp("V").endswith(VERSION)
    assert relay.unix("V") == VERSION + "\n"
