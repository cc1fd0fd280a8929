"""``--kernel-forward``: settled IPv4 streams relayed by nftables, in a private namespace.

Each test runs the relay in its own network namespace (root only) and creates the
parties' sockets there. That the kernel, not the relay process, carried a packet shows in
the per-stream counters of the relay's nftables set.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyrtpproxy.media.record import read_file

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
from .netns import NetNamespace, namespaces_available
from .test_relay import Call, relay_ok, setup_call

pytestmark = pytest.mark.skipif(
    namespaces_available() is not None, reason=namespaces_available() or ""
)

COUNTED = re.compile(r"([0-9.]+) \. (\d+) \. (\d+) counter packets (\d+)")


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    ns = NetNamespace()
    yield ns
    ns.delete()


@pytest.fixture
def kernel_relay(relay_factory: RelayFactory, netns: NetNamespace) -> Callable[..., Relay]:
    def start(*extra: str, ttl: int = 60) -> Relay:
        return relay_factory("--kernel-forward", *extra, ttl=ttl, wrapper=netns.wrapper)

    return start


@pytest.fixture
def ns_parties(netns: NetNamespace) -> Iterator[Callable[[], Party]]:
    made: list[Party] = []

    def make() -> Party:
        party = netns.call(Party)
        made.append(party)
        return party

    yield make
    for party in made:
        party.close()


def kernel_counts(netns: NetNamespace) -> dict[tuple[int, int], int]:
    """Packets the kernel forwarded, by (source port, relay port)."""
    listing = netns.run("nft", "list", "set", "ip", "pyrtpproxy", "inbound")
    return {(int(s), int(d)): int(n) for _h, s, d, n in COUNTED.findall(listing)}


def settle(call: Call, netns: NetNamespace, seq: int = 0) -> None:
    """One packet each way latches both legs; wait until the kernel took over both."""
    relay_ok(call.caller, call.b, call.callee, seq)
    relay_ok(call.callee, call.a, call.caller, seq, 0x55)
    expected = {(call.caller.port, call.b), (call.callee.port, call.a)}
    assert wait_for(lambda: expected <= set(kernel_counts(netns)), 3.0), kernel_counts(netns)


def test_settled_streams_are_relayed_by_the_kernel(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[[], Party], netns: NetNamespace
) -> None:
    metrics_port = free_port()
    relay = kernel_relay("--metrics-listen", f"127.0.0.1:{metrics_port}")
    call = setup_call(relay, "kf1", ns_parties(), ns_parties())
    settle(call, netns)
    for seq in range(1, 51):
        assert relay_ok(call.caller, call.b, call.callee, seq) == ("127.0.0.1", call.a)
        assert relay_ok(call.callee, call.a, call.caller, seq, 0x55) == ("127.0.0.1", call.b)
    counts = kernel_counts(netns)
    assert counts[(call.caller.port, call.b)] == 50
    assert counts[(call.callee.port, call.a)] == 50
    # RTCP settles and moves to the kernel the same way
    for _ in range(3):
        call.caller.send_rtcp(call.b + 1, rtcp_packet())
        assert call.callee.recv_rtcp() == (rtcp_packet(), ("127.0.0.1", call.a + 1))
    assert wait_for(lambda: (call.caller.port + 1, call.b + 1) in kernel_counts(netns), 3.0)
    scrape = netns.call(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
    )
    assert "pyrtpproxy_kernel_forwarded_streams 3.0" in scrape
    # Q (RTP) and G (RTP and RTCP) include what the kernel relayed
    assert relay.cmd("Q kf1 ft tt").split()[1:4] == ["51", "51", "102"]
    assert relay.counter("npkts_relayed") == [105]
    relay.stop()
    assert "pyrtpproxy" not in netns.run("nft", "list", "tables")


def test_strangers_and_relatching_stay_with_the_relay(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[[], Party], netns: NetNamespace
) -> None:
    relay = kernel_relay()
    caller, callee, stranger = ns_parties(), ns_parties(), ns_parties()
    call = setup_call(relay, "kf2", caller, callee)
    settle(call, netns)
    # 600 packets in the kernel: re-latching by SSRC must still find the sequence close
    for first in range(1, 601, 100):  # in bursts the callee's socket buffer can hold
        for seq in range(first, first + 100):
            caller.send(call.b, rtp_packet(seq))
        assert len(callee.drain()) == 100
    stranger.send(call.b, rtp_packet(5, ssrc=0x99))
    assert callee.recv(0.3) is None
    # the caller's NAT moves it to a new port, same SSRC, next sequence number
    moved = ns_parties()
    assert relay_ok(moved, call.b, callee, 601) == ("127.0.0.1", call.a)
    assert wait_for(lambda: (moved.port, call.b) in kernel_counts(netns), 3.0)
    assert (caller.port, call.b) not in kernel_counts(netns)
    assert relay_ok(moved, call.b, callee, 602) == ("127.0.0.1", call.a)
    stranger.send(call.b, rtp_packet(6, ssrc=0x99))
    assert callee.recv(0.3) is None
    # hold (0.0.0.0 in SDP) does not stop latched media, in the kernel as in the relay
    assert parse_port(relay.cmd("L kf2 0.0.0.0 0 ft tt")) == call.b
    before = kernel_counts(netns)[(moved.port, call.b)]
    assert relay_ok(moved, call.b, callee, 603) == ("127.0.0.1", call.a)
    assert kernel_counts(netns)[(moved.port, call.b)] == before + 1


def test_kernel_traffic_keeps_the_session_alive(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[[], Party], netns: NetNamespace
) -> None:
    relay = kernel_relay(ttl=2)
    call = setup_call(relay, "kf3", ns_parties(), ns_parties())
    settle(call, netns)
    deadline = time.monotonic() + 4.5  # well past -T 2 (+1 s)
    seq = 1
    while time.monotonic() < deadline:
        call.caller.send(call.b, rtp_packet(seq))
        seq += 1
        time.sleep(0.1)
    assert relay.cmd("Q kf3 ft tt").split()[0] != "E50"
    assert len(call.callee.drain()) == seq - 1
    # silence: the session times out and its map elements go with it
    assert wait_for(lambda: relay.cmd("Q kf3 ft tt").startswith("E"), 6.0)
    assert kernel_counts(netns) == {}
    assert relay.counter("nsess_timeout", "npkts_relayed") == [1, seq + 1]


def test_delete_keeps_the_kernel_counts(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[[], Party], netns: NetNamespace
) -> None:
    relay = kernel_relay()
    call = setup_call(relay, "kf4", ns_parties(), ns_parties())
    settle(call, netns)
    for seq in range(1, 21):
        call.caller.send(call.b, rtp_packet(seq))
    assert len(call.callee.drain()) == 20
    assert relay.cmd("D kf4 ft tt") == "0"
    assert kernel_counts(netns) == {}
    # counted the moment the session ended, without waiting for a sweep
    assert relay.counter("npkts_rcvd", "npkts_relayed") == [22, 22]
    call.caller.send(call.b, rtp_packet(21))
    assert call.callee.recv(0.3) is None


def test_two_calls_between_the_same_two_sockets(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[[], Party], netns: NetNamespace
) -> None:
    relay = kernel_relay()
    caller, callee = ns_parties(), ns_parties()
    calls = [setup_call(relay, f"kf5{n}", caller, callee) for n in range(2)]
    for call in calls:
        settle(call, netns)
    for seq in range(1, 6):
        for call in calls:  # each call's packets leave from that call's own ports
            assert relay_ok(caller, call.b, callee, seq) == ("127.0.0.1", call.a)
            assert relay_ok(callee, call.a, caller, seq, 0x55) == ("127.0.0.1", call.b)
    assert all(n == 5 for n in kernel_counts(netns).values()), kernel_counts(netns)


def test_a_recorded_stream_leaves_the_kernel_and_comes_back(
    kernel_relay: Callable[..., Relay],
    ns_parties: Callable[[], Party],
    netns: NetNamespace,
    tmp_path: Path,
) -> None:
    record = tmp_path / "rec"
    record.mkdir()
    relay = kernel_relay("-r", str(record))
    call = setup_call(relay, "kr1", ns_parties(), ns_parties())
    settle(call, netns)
    caller_key = (call.caller.port, call.b)
    assert relay.cmd("R kr1 ft tt") == "0"
    # the recorded direction is taken back into user space; the other one stays
    assert wait_for(lambda: caller_key not in kernel_counts(netns), 3.0), kernel_counts(netns)
    assert (call.callee.port, call.a) in kernel_counts(netns)
    for seq in range(1, 11):
        relay_ok(call.caller, call.b, call.callee, seq)
    assert relay.cmd("N kr1 ft tt") == "0"
    recorded = read_file(record / "kr1=ft.o.rtp")
    assert [r.payload for r in recorded] == [rtp_packet(seq) for seq in range(1, 11)]
    # recording stopped: the next packet settles the stream in the kernel again
    relay_ok(call.caller, call.b, call.callee, 11)
    assert wait_for(lambda: caller_key in kernel_counts(netns), 3.0), kernel_counts(netns)


def test_a_re_packetized_stream_leaves_the_kernel_and_comes_back(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[[], Party], netns: NetNamespace
) -> None:
    relay = kernel_relay()
    call = setup_call(relay, "kz1", ns_parties(), ns_parties())
    settle(call, netns)
    caller_key = (call.caller.port, call.b)
    assert relay.cmd(f"Uz40 kz1 127.0.0.1 {call.caller.port} ft tt").split()[0] == str(call.a)
    # the caller's media is taken back into user space to be re-cut; the callee's stays
    assert wait_for(lambda: caller_key not in kernel_counts(netns), 3.0), kernel_counts(netns)
    assert (call.callee.port, call.a) in kernel_counts(netns)
    for seq in range(1, 5):
        call.caller.send(call.b, rtp_packet(seq))
    got = [call.callee.recv(1.0) for _ in range(2)]
    assert [len(g[0]) for g in got if g] == [12 + 320] * 2
    # a U without z: back to relaying as sent, and into the kernel again
    relay.cmd(f"U kz1 127.0.0.1 {call.caller.port} ft tt")
    relay_ok(call.caller, call.b, call.callee, 5)
    assert wait_for(lambda: caller_key in kernel_counts(netns), 3.0), kernel_counts(netns)
