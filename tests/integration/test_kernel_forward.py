"""``--kernel-forward``: settled streams relayed by nftables, in a private namespace.

Each test runs the relay in its own network namespace (root only) and creates the
parties' sockets there. That the kernel, not the relay process, carried a packet shows in
the per-stream counters of the relay's nftables set (table ``inet pyrtpproxy_<pid>``).
Run them under the shared lock: ``flock /tmp/pyrtpproxy-e2e.lock .venv/bin/pytest -q
tests/integration/test_kernel_forward.py``.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyrtpproxy.media.record import read_file

from .conftest import (
    PYRTPPROXY,
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

COUNTED = re.compile(r"([0-9a-f.:]+) \. (\d+) \. (\d+) counter packets (\d+)")
# setpriv runs the relay as root without CAP_NET_ADMIN (and unable to regain it)
WITHOUT_NET_ADMIN = ("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    ns = NetNamespace()
    yield ns
    ns.delete()


@pytest.fixture
def kernel_relay(relay_factory: RelayFactory, netns: NetNamespace) -> Callable[..., Relay]:
    def start(*extra: str, ttl: int = 60, listen: str = "127.0.0.1") -> Relay:
        return relay_factory(
            "--kernel-forward", *extra, ttl=ttl, listen=listen, wrapper=netns.wrapper
        )

    return start


@pytest.fixture
def ns_parties(netns: NetNamespace) -> Iterator[Callable[..., Party]]:
    made: list[Party] = []

    def make(host: str = "127.0.0.1") -> Party:
        party = netns.call(lambda: Party(host))
        made.append(party)
        return party

    yield make
    for party in made:
        party.close()


def table_of(relay: Relay) -> str:
    """The relay's own table (``ip netns exec`` execs, so the pid is the relay's)."""
    return f"pyrtpproxy_{relay.pid}"


def kernel_counts(
    netns: NetNamespace, relay: Relay, family: str = "4"
) -> dict[tuple[int, int], int]:
    """Packets the kernel forwarded, by (source port, relay port)."""
    listing = netns.run("nft", "list", "set", "inet", table_of(relay), f"inbound{family}")
    return {(int(s), int(d)): int(n) for _h, s, d, n in COUNTED.findall(listing)}


def settle(call: Call, netns: NetNamespace, seq: int = 0, family: str = "4") -> None:
    """One packet each way latches both legs; wait until the kernel took over both."""
    relay_ok(call.caller, call.b, call.callee, seq)
    relay_ok(call.callee, call.a, call.caller, seq, 0x55)
    expected = {(call.caller.port, call.b), (call.callee.port, call.a)}

    def counts() -> dict[tuple[int, int], int]:
        return kernel_counts(netns, call.relay, family)

    assert wait_for(lambda: expected <= set(counts()), 3.0), counts()


def scrape(netns: NetNamespace, port: int) -> str:
    return netns.call(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
    )


# address family (the nftables sets' suffix), the parties' address, the relay's -l/-6
BOTH_FAMILIES = pytest.mark.parametrize(
    ("family", "host", "listen"),
    [("4", "127.0.0.1", ("-l", "127.0.0.1")), ("6", "::1", ("-6", "::1"))],
    ids=["ipv4", "ipv6"],
)


@BOTH_FAMILIES
def test_settled_streams_are_relayed_by_the_kernel(
    kernel_relay: Callable[..., Relay],
    ns_parties: Callable[..., Party],
    netns: NetNamespace,
    family: str,
    host: str,
    listen: tuple[str, str],
) -> None:
    metrics_port = free_port()
    relay = kernel_relay("--metrics-listen", f"127.0.0.1:{metrics_port}", *listen, listen="")
    assert f"kernel forwarding: on (nftables table inet {table_of(relay)}" in relay.log_text()
    call = setup_call(relay, "kf1", ns_parties(host), ns_parties(host))
    settle(call, netns, family=family)
    for seq in range(1, 51):
        assert relay_ok(call.caller, call.b, call.callee, seq) == (host, call.a)
        assert relay_ok(call.callee, call.a, call.caller, seq, 0x55) == (host, call.b)
    counts = kernel_counts(netns, relay, family)
    assert counts[(call.caller.port, call.b)] == 50
    assert counts[(call.callee.port, call.a)] == 50
    # RTCP settles and moves to the kernel the same way
    for _ in range(3):
        call.caller.send_rtcp(call.b + 1, rtcp_packet())
        assert call.callee.recv_rtcp() == (rtcp_packet(), (host, call.a + 1))
    key = (call.caller.port + 1, call.b + 1)
    assert wait_for(lambda: key in kernel_counts(netns, relay, family), 3.0)
    metrics = scrape(netns, metrics_port)
    assert "pyrtpproxy_kernel_forwarding_enabled 1.0" in metrics
    assert "pyrtpproxy_kernel_forwarded_streams 3.0" in metrics
    # Q (RTP) and G (RTP and RTCP) include what the kernel relayed
    assert relay.cmd("Q kf1 ft tt").split()[1:4] == ["51", "51", "102"]
    assert relay.counter("npkts_relayed") == [105]
    # the first packet of each stream went through the relay, the rest through the kernel
    metrics = scrape(netns, metrics_port)
    kernel_share = sum(kernel_counts(netns, relay, family).values())
    assert f'pyrtpproxy_forwarded_packets_total{{path="kernel"}} {kernel_share}.0' in metrics
    assert f'pyrtpproxy_forwarded_packets_total{{path="user"}} {105 - kernel_share}.0' in metrics
    relay.stop()
    assert "pyrtpproxy" not in netns.run("nft", "list", "tables")


@BOTH_FAMILIES
def test_strangers_and_relatching_stay_with_the_relay(
    kernel_relay: Callable[..., Relay],
    ns_parties: Callable[..., Party],
    netns: NetNamespace,
    family: str,
    host: str,
    listen: tuple[str, str],
) -> None:
    relay = kernel_relay(*listen, listen="")
    caller, callee, stranger = ns_parties(host), ns_parties(host), ns_parties(host)
    call = setup_call(relay, "kf2", caller, callee)
    settle(call, netns, family=family)

    def counts() -> dict[tuple[int, int], int]:
        return kernel_counts(netns, relay, family)

    # 600 packets in the kernel: re-latching by SSRC must still find the sequence close
    for first in range(1, 601, 100):  # in bursts the callee's socket buffer can hold
        for seq in range(first, first + 100):
            caller.send(call.b, rtp_packet(seq))
        assert len(callee.drain()) == 100
    stranger.send(call.b, rtp_packet(5, ssrc=0x99))
    assert callee.recv(0.3) is None
    # the caller's NAT moves it to a new port, same SSRC, next sequence number
    moved = ns_parties(host)
    assert relay_ok(moved, call.b, callee, 601) == (host, call.a)
    assert wait_for(lambda: (moved.port, call.b) in counts(), 3.0)
    assert (caller.port, call.b) not in counts()
    assert relay_ok(moved, call.b, callee, 602) == (host, call.a)
    stranger.send(call.b, rtp_packet(6, ssrc=0x99))
    assert callee.recv(0.3) is None
    # hold (the unspecified address in SDP) does not stop latched media, in the kernel
    # as in the relay
    hold = "L kf2 0.0.0.0 0 ft tt" if family == "4" else "L6 kf2 :: 0 ft tt"
    assert parse_port(relay.cmd(hold)) == call.b
    before = counts()[(moved.port, call.b)]
    assert relay_ok(moved, call.b, callee, 603) == (host, call.a)
    assert counts()[(moved.port, call.b)] == before + 1


def test_kernel_traffic_keeps_the_session_alive(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[..., Party], netns: NetNamespace
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
    assert kernel_counts(netns, relay) == {}
    assert relay.counter("nsess_timeout", "npkts_relayed") == [1, seq + 1]


def test_delete_keeps_the_kernel_counts(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[..., Party], netns: NetNamespace
) -> None:
    relay = kernel_relay()
    call = setup_call(relay, "kf4", ns_parties(), ns_parties())
    settle(call, netns)
    for seq in range(1, 21):
        call.caller.send(call.b, rtp_packet(seq))
    assert len(call.callee.drain()) == 20
    assert relay.cmd("D kf4 ft tt") == "0"
    assert kernel_counts(netns, relay) == {}
    # counted the moment the session ended, without waiting for a sweep
    assert relay.counter("npkts_rcvd", "npkts_relayed") == [22, 22]
    call.caller.send(call.b, rtp_packet(21))
    assert call.callee.recv(0.3) is None


def test_two_calls_between_the_same_two_sockets(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[..., Party], netns: NetNamespace
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
    assert all(n == 5 for n in kernel_counts(netns, relay).values()), kernel_counts(netns, relay)


def test_a_recorded_stream_leaves_the_kernel_and_comes_back(
    kernel_relay: Callable[..., Relay],
    ns_parties: Callable[..., Party],
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
    assert wait_for(lambda: caller_key not in kernel_counts(netns, relay), 3.0), kernel_counts(
        netns, relay
    )
    assert (call.callee.port, call.a) in kernel_counts(netns, relay)
    for seq in range(1, 11):
        relay_ok(call.caller, call.b, call.callee, seq)
    assert relay.cmd("N kr1 ft tt") == "0"
    recorded = read_file(record / "kr1=ft.o.rtp")
    assert [r.payload for r in recorded] == [rtp_packet(seq) for seq in range(1, 11)]
    # recording stopped: the next packet settles the stream in the kernel again
    relay_ok(call.caller, call.b, call.callee, 11)
    assert wait_for(lambda: caller_key in kernel_counts(netns, relay), 3.0), kernel_counts(
        netns, relay
    )


def test_auto_without_net_admin_relays_in_user_space(
    relay_factory: RelayFactory, ns_parties: Callable[..., Party], netns: NetNamespace
) -> None:
    metrics_port = free_port()
    relay = relay_factory(
        "--kernel-forward", "auto", "--metrics-listen", f"127.0.0.1:{metrics_port}",
        wrapper=(*netns.wrapper, *WITHOUT_NET_ADMIN),
    )  # fmt: skip
    lines = [line for line in relay.log_text().splitlines() if "kernel forwarding" in line]
    assert len(lines) == 1 and lines[0].endswith("kernel forwarding: off (auto: no CAP_NET_ADMIN)")
    call = setup_call(relay, "ka1", ns_parties(), ns_parties())
    for seq in range(10):
        assert relay_ok(call.caller, call.b, call.callee, seq) == ("127.0.0.1", call.a)
    assert netns.run("nft", "list", "tables") == ""
    metrics = scrape(netns, metrics_port)
    assert "pyrtpproxy_kernel_forwarding_enabled 0.0" in metrics
    assert 'pyrtpproxy_forwarded_packets_total{path="user"} 10.0' in metrics
    assert 'pyrtpproxy_forwarded_packets_total{path="kernel"} 0.0' in metrics


@pytest.mark.parametrize("flag", [("--kernel-forward", "on"), ("--kernel-forward",)])
def test_on_without_net_admin_refuses_to_start(
    netns: NetNamespace, tmp_path: Path, flag: tuple[str, ...]
) -> None:
    done = subprocess.run(
        [*netns.wrapper, *WITHOUT_NET_ADMIN, *PYRTPPROXY, *flag,
         "-f", "-F", "-p", "/dev/null", "-s", f"unix:{tmp_path / 'r.sock'}", "-l", "127.0.0.1"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "pyrtpproxy: --kernel-forward on: cannot use nftables: no CAP_NET_ADMIN (run as root, "
        "or grant CAP_NET_ADMIN; --kernel-forward auto falls back to user space)"
    )
    assert not (tmp_path / "r.sock").exists()


def test_two_relays_in_one_namespace_have_a_table_each(
    relay_factory: RelayFactory, ns_parties: Callable[..., Party], netns: NetNamespace
) -> None:
    relays = [relay_factory("--kernel-forward", "auto", wrapper=netns.wrapper) for _ in range(2)]
    calls = [setup_call(r, f"k2r{n}", ns_parties(), ns_parties()) for n, r in enumerate(relays)]
    for call in calls:
        settle(call, netns)
    for call in calls:
        for seq in range(1, 6):
            relay_ok(call.caller, call.b, call.callee, seq)
        assert kernel_counts(netns, call.relay)[(call.caller.port, call.b)] == 5
    relays[0].stop()  # its table goes, the other relay's stays and forwards
    assert table_of(relays[0]) not in netns.run("nft", "list", "tables")
    relay_ok(calls[1].caller, calls[1].b, calls[1].callee, 6)
    assert kernel_counts(netns, relays[1])[(calls[1].caller.port, calls[1].b)] == 6


def test_a_stale_table_is_replaced_and_a_running_relays_is_left_alone(
    relay_factory: RelayFactory, netns: NetNamespace, tmp_path: Path
) -> None:
    netns.run("nft", "add", "table", "inet", "shared")  # left behind: no owner
    first = relay_factory("--kernel-forward", "--nft-table", "shared", wrapper=netns.wrapper)
    assert "removing the stale nftables table inet shared" in first.log_text()
    assert "flags owner" in netns.run("nft", "list", "table", "inet", "shared")
    second = relay_factory(
        "--kernel-forward", "auto", "--nft-table", "shared", wrapper=netns.wrapper
    )
    assert (
        "WARNING pyrtpproxy: kernel forwarding: off (auto: table inet shared belongs to another "
        "running process (python"
    ) in second.log_text()
    done = subprocess.run(
        [*netns.wrapper, *PYRTPPROXY, "--kernel-forward", "on", "--nft-table", "shared",
         "-f", "-F", "-p", "/dev/null", "-s", f"unix:{tmp_path / 'x.sock'}", "-l", "127.0.0.1"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--kernel-forward on: cannot use nftables: table inet shared belongs to" in done.stderr
    assert first.alive() and "flags owner" in netns.run("nft", "list", "table", "inet", "shared")


def test_a_firewall_reload_leaves_forwarded_calls_alone(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[..., Party], netns: NetNamespace
) -> None:
    relay = kernel_relay()
    call = setup_call(relay, "kfr", ns_parties(), ns_parties())
    settle(call, netns)
    netns.run("nft", "flush", "ruleset")  # what `systemctl reload nftables` starts with
    for seq in range(1, 11):
        assert relay_ok(call.caller, call.b, call.callee, seq) == ("127.0.0.1", call.a)
    assert kernel_counts(netns, relay)[(call.caller.port, call.b)] == 10
    assert relay.cmd("Q kfr ft tt").split()[1:3] == ["11", "1"]


def test_a_prompt_takes_the_muted_direction_out_of_the_kernel(
    kernel_relay: Callable[..., Relay],
    ns_parties: Callable[[], Party],
    netns: NetNamespace,
    tmp_path: Path,
) -> None:
    (tmp_path / "pr.0").write_bytes(bytes(range(160)) * 5)  # 10 packets
    relay = kernel_relay()
    call = setup_call(relay, "kp1", ns_parties(), ns_parties())
    settle(call, netns)
    callee_key = (call.callee.port, call.a)
    assert relay.cmd(f"P-1 kp1 {tmp_path / 'pr'} 0 ft tt") == "0"  # the caller listens
    # the callee's media towards the caller is muted: back in user space; the other stays
    assert wait_for(lambda: callee_key not in kernel_counts(netns, relay), 3.0), kernel_counts(
        netns, relay
    )
    assert (call.caller.port, call.b) in kernel_counts(netns, relay)
    call.callee.send(call.a, rtp_packet(900, 0x55))
    heard = [call.caller.recv(1.0) for _ in range(30)]  # 300 ms of the looping prompt
    assert all(got is not None and got[0][1] & 0x7F == 0 and len(got[0]) == 92 for got in heard)
    assert relay.cmd("S kp1 ft tt") == "0"
    call.caller.drain(0.1)
    relay_ok(call.callee, call.a, call.caller, 901, 0x55)  # unmuted, and settled again
    assert wait_for(lambda: callee_key in kernel_counts(netns, relay), 3.0), kernel_counts(
        netns, relay
    )


def test_a_re_packetized_stream_leaves_the_kernel_and_comes_back(
    kernel_relay: Callable[..., Relay], ns_parties: Callable[[], Party], netns: NetNamespace
) -> None:
    relay = kernel_relay()
    call = setup_call(relay, "kz1", ns_parties(), ns_parties())
    settle(call, netns)
    caller_key = (call.caller.port, call.b)
    assert relay.cmd(f"Uz40 kz1 127.0.0.1 {call.caller.port} ft tt").split()[0] == str(call.a)
    # the caller's media is taken back into user space to be re-cut; the callee's stays
    assert wait_for(lambda: caller_key not in kernel_counts(netns, relay), 3.0), kernel_counts(
        netns, relay
    )
    assert (call.callee.port, call.a) in kernel_counts(netns, relay)
    for seq in range(1, 5):
        call.caller.send(call.b, rtp_packet(seq))
    got = [call.callee.recv(1.0) for _ in range(2)]
    assert [len(g[0]) for g in got if g] == [12 + 320] * 2
    # a U without z: back to relaying as sent, and into the kernel again
    relay.cmd(f"U kz1 127.0.0.1 {call.caller.port} ft tt")
    relay_ok(call.caller, call.b, call.callee, 5)
    assert wait_for(lambda: caller_key in kernel_counts(netns, relay), 3.0), kernel_counts(
        netns, relay
    )
