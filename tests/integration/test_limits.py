"""Running out of ports or file descriptors: E72/E71, a log line, nothing else hurt."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

from .conftest import VERSION, Party, RelayFactory, parse_port, rtp_packet, wait_for

PartyFactory = Callable[..., Party]


def _relays_rtp(caller: Party, callee: Party, a: int, b: int, seq: int) -> bool:
    caller.send(b, rtp_packet(seq, 0xA1))
    callee.send(a, rtp_packet(seq, 0xB2))
    got_callee, got_caller = callee.recv(1.0), caller.recv(1.0)
    return got_callee is not None and got_caller is not None


def test_port_range_exhaustion_gives_e72_for_sessions_and_e71_for_legs(
    relay_factory: RelayFactory, parties: PartyFactory
) -> None:
    relay = relay_factory(ports=6)  # three RTP/RTCP pairs
    caller, callee = parties(), parties()
    a = parse_port(relay.cmd(f"U old 127.0.0.1 {caller.port} ft"))
    b = parse_port(relay.cmd(f"L old 127.0.0.1 {callee.port} ft tt"))
    assert parse_port(relay.cmd("U half 127.0.0.1 5000 ft"))
    assert relay.cmd("U more 127.0.0.1 5000 ft") == "E72"
    assert relay.udp("U more 127.0.0.1 5000 ft").endswith(" E72")
    assert relay.cmd("L half 127.0.0.1 5002 ft tt") == "E71"
    assert relay.cmd("Q more ft") == "E50"  # nothing half made
    assert _relays_rtp(caller, callee, a, b, 1)
    assert relay.cmd("D half ft") == "0"
    assert parse_port(relay.cmd("U more 127.0.0.1 5000 ft"))
    assert relay.counter("nsess_created") == [3]


def test_a_low_open_file_limit_warns_and_answers_e_codes(
    relay_factory: RelayFactory, parties: PartyFactory
) -> None:
    relay = relay_factory("-L", "64")
    warning = re.search(r"open-file limit 64 allows about (\d+) sessions", relay.log_text())
    assert warning is not None, relay.log_text()
    caller, callee = parties(), parties()
    a = parse_port(relay.cmd(f"U old 127.0.0.1 {caller.port} ft"))
    b = parse_port(relay.cmd(f"L old 127.0.0.1 {callee.port} ft tt"))
    assert _relays_rtp(caller, callee, a, b, 1)
    replies = []
    for n in range(40):  # far more than 64 descriptors' worth of sessions
        replies.append(relay.cmd(f"U c{n} 127.0.0.1 5000 ft"))
        if replies[-1] != "E72":
            replies.append(relay.cmd(f"L c{n} 127.0.0.1 5002 ft tt"))
    assert "E72" in replies and set(replies) - {"E71", "E72"}, replies
    assert all(r in ("E71", "E72") or parse_port(r) for r in replies), replies
    made = sum(1 for r in replies if r not in ("E71", "E72")) // 2
    assert abs(made + 1 - int(warning[1])) <= 2, (made, warning[0])
    assert "cannot open media sockets" in relay.log_text()
    # the control sockets keep answering, even with idle connections holding descriptors
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(8)]
    try:
        for sock in idle:
            sock.connect(relay.unix_path)
        assert relay.unix("V") == VERSION + "\n"
        with relay.tcp() as tcp:
            assert tcp.command("V") == VERSION
        assert relay.udp("V").endswith(VERSION)
    finally:
        for sock in idle:
            sock.close()
    assert _relays_rtp(caller, callee, a, b, 2)  # the call set up first goes on
    for n in range(40):
        relay.unix(f"D c{n} ft")
    assert wait_for(lambda: relay.cmd("U again 127.0.0.1 5000 ft") not in ("E71", "E72"), 3.0)
    assert "Traceback" not in relay.log_text()
