"""Real RTP/RTCP over loopback through a relay process (relay-behaviour.md §2-§6).

Naming: the caller's SDP address goes into ``U`` (the reply is leg A's port, which goes
to the callee); the callee's SDP address goes into ``L`` (the reply is leg B's port, which
goes to the caller). The caller sends to B and the callee hears it from A, and back.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import (
    Party,
    Relay,
    RelayFactory,
    free_port,
    ipv6_available,
    parse_port,
    rtcp_packet,
    rtp_packet,
    wait_for,
)

PartyFactory = Callable[..., Party]


@dataclass
class Call:
    relay: Relay
    call_id: str
    caller: Party
    callee: Party
    a: int  # returned by U: the callee sends here
    b: int  # returned by L: the caller sends here


def setup_call(
    relay: Relay,
    call_id: str,
    caller: Party,
    callee: Party,
    mods: str = "",
    caller_port: int | None = None,
) -> Call:
    """U with the caller's SDP address, L with the callee's."""
    six = "6" if caller.family == socket.AF_INET6 else ""
    u = relay.cmd(f"U{mods}{six} {call_id} {caller.host} {caller_port or caller.port} ft")
    a = parse_port(u)
    lreply = relay.cmd(f"L{mods}{six} {call_id} {callee.host} {callee.port} ft tt")
    b = parse_port(lreply)
    assert a != b
    return Call(relay, call_id, caller, callee, a, b)


def relay_ok(
    sender: Party, port: int, receiver: Party, seq: int, ssrc: int = 0x11223344
) -> tuple[str, int]:
    """Send one RTP packet and require it to arrive unchanged; returns its source address."""
    packet = rtp_packet(seq, ssrc)
    sender.send(port, packet)
    got = receiver.recv(1.0)
    assert got is not None, f"packet seq {seq} to port {port} was not relayed"
    assert got[0] == packet
    return got[1]


def test_both_directions_rtp_and_rtcp(relay: Relay, parties: PartyFactory) -> None:
    caller, callee = parties(), parties()
    call = setup_call(relay, "dir1", caller, callee)
    for seq in range(5):
        assert relay_ok(caller, call.b, callee, seq) == ("127.0.0.1", call.a)
        assert relay_ok(callee, call.a, caller, 100 + seq, 0x55) == ("127.0.0.1", call.b)
    # RTCP on P+1 both ways, with the parties' RTCP ports = SDP port + 1
    report = rtcp_packet(0x11223344)
    caller.send_rtcp(call.b + 1, report)
    got = callee.recv_rtcp()
    assert got == (report, ("127.0.0.1", call.a + 1))
    caller_report = rtcp_packet(0x55)
    callee.send_rtcp(call.a + 1, caller_report)
    got = caller.recv_rtcp()
    assert got == (caller_report, ("127.0.0.1", call.b + 1))
    # nothing crossed over between RTP and RTCP
    assert callee.recv(0.1) is None and caller.recv(0.1) is None


def test_nothing_relayed_before_complete(relay: Relay, parties: PartyFactory) -> None:
    caller, callee, early = parties(), parties(), parties()
    a = parse_port(relay.cmd(f"U early1 127.0.0.1 {caller.port} ft"))
    discard0 = relay.counter("npkts_discard")[0]
    for seq in range(5):
        early.send(a, rtp_packet(seq, 0x777))  # to A before L: discarded, no latching
        caller.send(a, rtp_packet(seq))
    assert caller.recv(0.3) is None and early.recv(0.05) is None
    assert wait_for(lambda: relay.counter("npkts_discard")[0] >= discard0 + 10, 2.0)
    assert relay.counter("npkts_rcvd", "npkts_relayed") == [0, 0]
    b = parse_port(relay.cmd(f"L early1 127.0.0.1 {callee.port} ft tt"))
    assert relay_ok(caller, b, callee, 10) == ("127.0.0.1", a)
    assert relay_ok(callee, a, caller, 11, 0x99) == ("127.0.0.1", b)
    assert early.recv(0.1) is None  # the early sender was not latched


def test_latching_to_nat_remapped_port(relay: Relay, parties: PartyFactory) -> None:
    sdp, nat, callee = parties(), parties(), parties()
    call = setup_call(relay, "nat1", sdp, callee)
    # the caller's packets really come from another port of the same host
    for seq in range(3):
        relay_ok(nat, call.b, callee, seq)
    for seq in range(3):
        relay_ok(callee, call.a, nat, 50 + seq, 0x66)
    assert sdp.recv(0.1) is None
    # RTCP is not re-guessed: the signalled RTCP address is on the same host (spec §3.1)
    callee.send_rtcp(call.a + 1, rtcp_packet(0x66))
    got = sdp.recv_rtcp()
    assert got is not None and got[1] == ("127.0.0.1", call.b + 1)
    # the caller's RTCP from the NAT'ed RTCP port latches that leg's RTCP stream
    nat.send_rtcp(call.b + 1, rtcp_packet(0x11))
    assert callee.recv_rtcp() is not None
    callee.send_rtcp(call.a + 1, rtcp_packet(0x66))
    got = nat.recv_rtcp()
    assert got is not None and got[1] == ("127.0.0.1", call.b + 1)


def test_third_party_refused_after_latching(relay: Relay, parties: PartyFactory) -> None:
    caller, callee, intruder = parties(), parties(), parties()
    call = setup_call(relay, "third1", caller, callee)
    for seq in range(3):
        relay_ok(caller, call.b, callee, seq)
    discard0 = relay.counter("npkts_discard")[0]
    for seq in range(10):
        intruder.send(call.b, rtp_packet(1000 + seq, 0xBAD))  # other SSRC, far sequence
    assert callee.recv(0.3) is None
    assert relay.counter("npkts_discard")[0] >= discard0 + 10
    # media for the caller still goes to the caller
    relay_ok(callee, call.a, caller, 70, 0x66)
    assert intruder.recv(0.1) is None
    relay_ok(caller, call.b, callee, 3)


def test_relatch_same_ssrc_close_sequence(relay: Relay, parties: PartyFactory) -> None:
    caller, moved, callee, intruder = parties(), parties(), parties(), parties()
    call = setup_call(relay, "relatch1", caller, callee)
    for seq in range(5):
        relay_ok(caller, call.b, callee, seq, 0xABC)
    relay_ok(callee, call.a, caller, 500, 0x66)
    # a stranger with another SSRC is dropped ...
    intruder.send(call.b, rtp_packet(5, 0xDEF))
    assert callee.recv(0.2) is None
    # ... the same SSRC with a close sequence number from a new port re-latches
    relay_ok(moved, call.b, callee, 6, 0xABC)
    relay_ok(callee, call.a, moved, 501, 0x66)
    assert caller.recv(0.1) is None
    # the old port is now a stranger with a far-away sequence number
    caller.send(call.b, rtp_packet(30000, 0x12345))
    assert callee.recv(0.2) is None


def test_relatch_window_after_u(relay: Relay, parties: PartyFactory) -> None:
    sdp, first, callee, newcomer = parties(), parties(), parties(), parties()
    call = setup_call(relay, "window1", sdp, callee)
    relay_ok(first, call.b, callee, 0, 0x111)  # latched to `first` (NAT)
    newcomer.send(call.b, rtp_packet(9000, 0x222))
    assert callee.recv(0.2) is None  # refused: latched, no window open
    # a U for the caller refreshes the leg's address: for 10 s any RTP source re-latches
    assert relay.cmd(f"U window1 127.0.0.1 {sdp.port} ft tt") == f"{call.a} 127.0.0.1"
    relay_ok(newcomer, call.b, callee, 9001, 0x222)
    relay_ok(callee, call.a, newcomer, 10, 0x333)
    assert first.recv(0.1) is None and sdp.recv(0.05) is None


def test_asymmetric_legs(relay: Relay, parties: PartyFactory) -> None:
    caller, caller_other, callee, callee_other = parties(), parties(), parties(), parties()
    call = setup_call(relay, "asym1", caller, callee, mods="a")
    # packets from any port of the right host are accepted ...
    relay_ok(caller_other, call.b, callee, 0)
    relay_ok(callee_other, call.a, caller, 100, 0x66)  # ... replies still go to the SDP port
    relay_ok(callee_other, call.a, caller, 101, 0x66)
    relay_ok(caller_other, call.b, callee, 1)
    assert caller_other.recv(0.1) is None and callee_other.recv(0.05) is None
    # a packet from another host is dropped
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_host:
        other_host.bind(("127.0.0.2", 0))
        other_host.sendto(rtp_packet(2), ("127.0.0.1", call.b))
    assert callee.recv(0.2) is None


def test_hold_keeps_flowing(relay: Relay, parties: PartyFactory) -> None:
    caller, callee = parties(), parties()
    call = setup_call(relay, "hold1", caller, callee)
    relay_ok(caller, call.b, callee, 0)
    relay_ok(callee, call.a, caller, 100, 0x66)
    # caller puts the call on hold (re-INVITE with 0.0.0.0), callee answers likewise
    assert relay.cmd("U hold1 0.0.0.0 0 ft tt") == f"{call.a} 127.0.0.1"
    assert relay.cmd("L hold1 0.0.0.0 0 ft tt") == f"{call.b} 127.0.0.1"
    for seq in range(1, 4):
        relay_ok(caller, call.b, callee, seq)
        relay_ok(callee, call.a, caller, 100 + seq, 0x66)
    # off hold
    assert relay.cmd(f"U hold1 127.0.0.1 {caller.port} ft tt") == f"{call.a} 127.0.0.1"
    relay_ok(callee, call.a, caller, 200, 0x66)


@pytest.mark.skipif(not ipv6_available(), reason="IPv6 loopback ::1 unavailable")
def test_ipv6_legs(relay_factory: RelayFactory, parties: PartyFactory) -> None:
    relay = relay_factory("-6", "::1", listen="")
    caller, callee = parties("::1"), parties("::1")
    reply = relay.cmd(f"U6 v6 ::1 {caller.port} ft")
    a = parse_port(reply)
    assert reply == f"{a} ::1 6"
    reply = relay.cmd(f"L6 v6 ::1 {callee.port} ft tt")
    b = parse_port(reply)
    assert reply == f"{b} ::1 6"
    for seq in range(3):
        assert relay_ok(caller, b, callee, seq)[:2] == ("::1", a)
        assert relay_ok(callee, a, caller, 100 + seq, 0x66)[:2] == ("::1", b)
    report = rtcp_packet()
    caller.send_rtcp(b + 1, report)
    got = callee.recv_rtcp()
    assert got is not None and got[0] == report and got[1][1] == a + 1


def test_q_and_g_counters_move_with_traffic(relay: Relay, parties: PartyFactory) -> None:
    caller, callee = parties(), parties()
    call = setup_call(relay, "cnt1", caller, callee)
    relayed0 = relay.counter("npkts_relayed")[0]
    for seq in range(7):
        relay_ok(caller, call.b, callee, seq)
    for seq in range(4):
        relay_ok(callee, call.a, caller, 100 + seq, 0x66)
    caller.send_rtcp(call.b + 1, rtcp_packet())
    assert callee.recv_rtcp() is not None
    q = relay.cmd("Qv cnt1 ft tt").split()
    fields = dict(item.split("=") for item in q)
    assert fields["npkts_ina"] == "7"
    assert fields["npkts_ino"] == "4"
    assert fields["nrelayed"] == "11"
    assert fields["ndropped"] == "0"
    assert 55 <= int(fields["ttl"]) <= 60
    # from the callee's point of view (reverse match) the directions swap
    assert relay.cmd("Q cnt1 tt ft npkts_ina npkts_ino") == "4 7"
    assert relay.cmd("Q cnt1 ft tt rtpa_nrcvd rtpa_nlost") == "7 0"
    # RTCP counts globally (11 RTP + 1 RTCP) but not in Q
    assert relay.counter("npkts_relayed")[0] - relayed0 == 12
    created, complete = relay.counter("nsess_created", "nsess_complete")
    assert created == 1 and complete == 1
    assert relay.cmd("D cnt1 ft tt") == "0"
    assert relay.counter("nsess_destroyed") == [1]


# --- timeouts and notifications -------------------------------------------------------------


class Listener:
    """A stream server collecting notification bytes (unix or tcp)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.data = b""
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @classmethod
    def unix(cls, path: str) -> Listener:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        return cls(sock)

    @classmethod
    def tcp(cls, port: int) -> Listener:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return cls(sock)

    def _serve(self) -> None:
        conns: list[socket.socket] = []
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                conn.settimeout(0.05)
                conns.append(conn)
                self.connections += 1
            except TimeoutError:
                pass
            except OSError:
                break
            for conn in conns:
                try:
                    chunk = conn.recv(4096)
                    if chunk:
                        self.data += chunk
                except (TimeoutError, OSError):
                    pass
        for conn in conns:
            conn.close()

    def lines(self) -> list[bytes]:
        return self.data.splitlines()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_timeout_and_notifications(
    relay_factory: RelayFactory, tmp_path: Path, parties: PartyFactory
) -> None:
    unix_path = str(tmp_path / "notify.sock")
    tcp_port = free_port()
    late_port = free_port()
    unix_listener = Listener.unix(unix_path)
    tcp_listener = Listener.tcp(tcp_port)
    late_listener: Listener | None = None
    relay = relay_factory(
        "-n", f"unix:{unix_path}", "-n", f"tcp:127.0.0.1:{tcp_port}",
        "-n", f"tcp:127.0.0.1:{late_port}", ttl=2,
    )  # fmt: skip
    try:
        assert relay.cmd("VF 20081224") == "1"
        caller, callee = parties(), parties()
        parse_port(relay.cmd(f"U to1 127.0.0.1 {caller.port} ft unix:{unix_path} tag%20one"))
        parse_port(relay.cmd(f"L to1 127.0.0.1 {callee.port} ft tt"))
        parse_port(relay.cmd(f"U to2 127.0.0.1 5000 ft tcp:127.0.0.1:{tcp_port} tcp_tag"))
        parse_port(relay.cmd("L to2 127.0.0.1 5002 ft tt"))
        # incomplete session (U only) also notifies on timeout
        parse_port(relay.cmd(f"U to3 127.0.0.1 5000 ft {unix_path} incomplete"))
        # deleted with D: never notified
        parse_port(relay.cmd(f"U to4 127.0.0.1 5000 ft unix:{unix_path} deleted"))
        assert relay.cmd("D to4 ft") == "0"
        # notification cancelled by a later U without notify arguments
        parse_port(relay.cmd(f"U to5 127.0.0.1 5000 ft unix:{unix_path} cancelled"))
        parse_port(relay.cmd("U to5 127.0.0.1 5000 ft"))
        # the late listener's session
        parse_port(relay.cmd(f"U to6 127.0.0.1 5000 ft tcp:127.0.0.1:{late_port} late"))
        started = time.monotonic()
        ttls = {int(relay.cmd("Q to1 ft tt").split()[0])}
        while relay.cmd("Q to1 ft tt") != "E50":
            assert time.monotonic() - started < 6.0, "session did not time out"
            reply = relay.cmd("Q to1 ft tt")
            if reply != "E50":
                ttls.add(int(reply.split()[0]))
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed <= 4.5, elapsed
        assert ttls <= {0, 1, 2} and 0 in ttls
        assert wait_for(lambda: relay.cmd("Q to6 ft") == "E50", 2.0)
        # the late listener comes up after the timeout fired
        time.sleep(0.5)
        late_listener = Listener.tcp(late_port)
        assert wait_for(lambda: b"late\n" in late_listener.data, 6.0), late_listener.data
        assert wait_for(lambda: len(unix_listener.lines()) >= 2, 3.0), unix_listener.data
        assert wait_for(lambda: tcp_listener.data == b"tcp_tag\n", 3.0), tcp_listener.data
        time.sleep(0.3)
        assert sorted(unix_listener.lines()) == [b"incomplete", b"tag one"]
        assert unix_listener.connections == 1  # one persistent connection per target
        assert late_listener.lines() == [b"late"]
        timeouts, destroyed = relay.counter("nsess_timeout", "nsess_destroyed")
        assert timeouts == 5 and destroyed == 6
    finally:
        unix_listener.close()
        tcp_listener.close()
        if late_listener is not None:
            late_listener.close()
    os.unlink(unix_path)


def test_traffic_keeps_session_alive(relay_factory: RelayFactory, parties: PartyFactory) -> None:
    relay = relay_factory(ttl=2)
    caller, callee = parties(), parties()
    call = setup_call(relay, "alive1", caller, callee)
    deadline = time.monotonic() + 4.0
    seq = 0
    while time.monotonic() < deadline:  # one direction only, unified timer
        relay_ok(caller, call.b, callee, seq)
        seq += 1
        time.sleep(0.2)
    assert relay.cmd("Q alive1 ft tt").split()[0] in ("1", "2")
    assert wait_for(lambda: relay.cmd("Q alive1 ft tt") == "E50", 5.0)
    caller.send(call.b, rtp_packet(seq))
    assert callee.recv(0.2) is None


def test_unknown_destination_is_dropped_then_learned(
    relay_factory: RelayFactory, parties: PartyFactory
) -> None:
    """The reference's rule: the first packet fills in an unknown address (the default
    policy holds it for the learning window first: test_latching_policy.py)."""
    relay = relay_factory("--latching", "rtpproxy")
    caller, callee = parties(), parties()
    a = parse_port(relay.cmd(f"U learn1 127.0.0.1 {caller.port} ft"))
    b = parse_port(relay.cmd("L learn1 0.0.0.0 0 ft tt"))  # callee's address unknown
    caller.send(b, rtp_packet(0))
    assert callee.recv(0.2) is None
    assert relay.cmd("Qv learn1 ft tt ndropped npkts_ina") == "ndropped=1 npkts_ina=1"
    # the callee's first packet fills in its address (and RTCP port + 1)
    assert relay_ok(callee, a, caller, 100, 0x66) == ("127.0.0.1", b)
    assert relay_ok(caller, b, callee, 1) == ("127.0.0.1", a)
    caller.send_rtcp(b + 1, rtcp_packet())
    assert callee.recv_rtcp() == (rtcp_packet(), ("127.0.0.1", a + 1))


def test_port_zero_then_media_latches(relay: Relay, parties: PartyFactory) -> None:
    caller, callee = parties(), parties()
    a = parse_port(relay.cmd(f"U zero1 127.0.0.1 {caller.port} ft"))
    b = parse_port(relay.cmd("L zero1 127.0.0.1 0 ft tt"))
    caller.send(b, rtp_packet(0))
    assert callee.recv(0.2) is None
    assert relay.unix("V") == "20040107\n"
    assert relay_ok(callee, a, caller, 100, 0x66) == ("127.0.0.1", b)
    assert relay_ok(caller, b, callee, 1) == ("127.0.0.1", a)


def test_rtcp_is_never_relatched(relay: Relay, parties: PartyFactory) -> None:
    caller, callee, other = parties(), parties(), parties()
    call = setup_call(relay, "rtcp1", caller, callee)
    a, b = call.a, call.b
    caller.send_rtcp(b + 1, rtcp_packet(1))
    assert callee.recv_rtcp() is not None
    other.send_rtcp(b + 1, rtcp_packet(1))  # same SSRC: irrelevant for RTCP
    assert callee.recv_rtcp(0.2) is None
    callee.send_rtcp(a + 1, rtcp_packet(2))
    assert caller.recv_rtcp() is not None and other.recv_rtcp(0.1) is None


def test_small_packets_sent_twice(relay_factory: RelayFactory, parties: PartyFactory) -> None:
    relay = relay_factory("-2")
    caller, callee = parties(), parties()
    call = setup_call(relay, "twice1", caller, callee)
    small = rtp_packet(1)[:60]
    for seq in range(3):
        caller.send(call.b, small)
        assert [d for d, _ in callee.drain(0.2)] == [small, small], seq
    big = rtp_packet(2)
    caller.send(call.b, big)
    assert [d for d, _ in callee.drain(0.2)] == [big]


def test_notification_reconnects_and_cc_self(
    relay_factory: RelayFactory, tmp_path: Path, parties: PartyFactory
) -> None:
    unix_path = str(tmp_path / "n2.sock")
    self_port = free_port()
    listener = Listener.unix(unix_path)
    self_listener = Listener.tcp(self_port)
    relay = relay_factory(
        "-n", unix_path, "-n", f"tcp:%%CC_SELF%%:{self_port}", ttl=1
    )  # fmt: skip
    try:
        parse_port(relay.cmd(f"U re1 127.0.0.1 5000 ft unix:{unix_path} first"))
        reply = relay.udp(f"U re2 127.0.0.1 5000 ft tcp:%%CC_SELF%%:{self_port} self%3Dtag")
        parse_port(reply.split(maxsplit=1)[1])
        assert wait_for(lambda: listener.data == b"first\n", 5.0), listener.data
        assert wait_for(lambda: self_listener.data == b"self=tag\n", 3.0), self_listener.data
        listener.close()  # the consumer restarts: the relay must reconnect
        os.unlink(unix_path)
        listener = Listener.unix(unix_path)
        parse_port(relay.cmd(f"U re3 127.0.0.1 5000 ft {unix_path} second"))
        assert wait_for(lambda: listener.data == b"second\n", 6.0), listener.data
    finally:
        listener.close()
        self_listener.close()
