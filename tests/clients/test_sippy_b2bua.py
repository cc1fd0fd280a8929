"""Sippy B2BUA's own rtpproxy client (``sippy.Rtp_proxy``) against a live pyrtpproxy.

Every command here is produced by sippy's real client code (``Rtp_proxy_client``,
``Rtp_proxy_session``, its sides and sequencer), driven by sippy's own reactor ``ED2``
in the test's main thread.  A spy on ``Rtp_proxy_client.send_command`` only records
what sippy sends; the relay's view is checked over a separate control socket.
See spec/clients.md "Sippy B2BUA".
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sippy.Core.EventDispatcher import ED2
from sippy.Rtp_proxy.client import CAPSTABLE, Rtp_proxy_client
from sippy.Rtp_proxy.session import Rtp_proxy_session
from sippy.Rtp_proxy.Session.update import update_params
from sippy.Time.Timeout import Timeout

from loopback import Party
from pyrtpproxy.media.record import read_file

from .conftest import Relay, TcpListener, wait_for

pytestmark = pytest.mark.timeout(30)


class Sippy:
    """One sippy ``Rtp_proxy_client`` plus helpers that run sippy's reactor."""

    def __init__(self, spath: str, sent: list[str], notify_socket: str | None = None) -> None:
        self.sent = sent
        self.gc: dict[str, Any] = {"_sip_address": "127.0.0.1"}
        self.rc = Rtp_proxy_client(self.gc, spath=spath)
        self.rc.hrtb_ival = 0.2  # heartbeat faster than B2BUA's 1 s, to keep tests short
        if notify_socket is not None:
            self.rc.notify_socket = notify_socket  # as b2bua.py does with b2bua_socket
        self.gc["rtp_proxy_client"] = self.rc

    def run_until(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ED2 until ``predicate()`` is truthy (checked every 20 ms) or timeout."""
        if predicate():
            return predicate()

        def check() -> None:
            if predicate():
                ED2.breakLoop()

        timer = Timeout(check, 0.02, -1)
        try:
            ED2.loop(timeout)
        finally:
            timer.cancel()
        return predicate()

    def last(self) -> str:
        """The latest command sent, heartbeats left out."""
        return next(c for c in reversed(self.sent) if c != "Ib")

    def online(self) -> None:
        assert self.run_until(lambda: self.rc.online), "sippy never saw the relay online"

    def session(self, call_id: str, notify_tag: str | None = None) -> Rtp_proxy_session:
        return Rtp_proxy_session(self.gc, call_id, "ftag", "ttag", notify_tag=notify_tag)

    def update(self, rs: Rtp_proxy_session, side: Any, port: int, index: int = 0) -> Any:
        """One SDP-driven U from ``side`` (sippy's ``_rtpps_side.update``); the result."""
        box: dict[str, Any] = {}
        up = update_params()
        up.rtpps, up.remote_ip, up.remote_port, up.index = rs, "127.0.0.1", port, index

        def done(ur: Any, rtpps: Any, ex: Exception | None = None) -> None:
            box["ur"], box["ex"] = ur, ex

        up.result_callback = done
        side.update(up)
        assert self.run_until(lambda: box), "no reply to sippy's U"
        assert box["ex"] is None and box["ur"] is not None, (box, self.sent[-1:])
        return box["ur"]

    def stats(self, rs: Rtp_proxy_session, index: int = 0) -> Any:
        box: dict[str, Any] = {}
        rs.stats(lambda result: box.setdefault("q", result), index)
        assert self.run_until(lambda: box), "no reply to sippy's Q"
        return box["q"]

    def close(self) -> None:
        self.rc.shutdown()
        self.run_until(lambda: False, 0.05)  # let queued thread callbacks drain


@pytest.fixture
def sippy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Sippy]]:
    """Factory for sippy clients; records every command any of them sends."""
    sent: list[str] = []
    original = Rtp_proxy_client.send_command

    def spy(self: Any, command: Any, *args: Any, **kwargs: Any) -> None:
        sent.append(str(command).rstrip("\n"))
        original(self, command, *args, **kwargs)

    monkeypatch.setattr(Rtp_proxy_client, "send_command", spy)
    clients: list[Sippy] = []

    def make(spath: str, notify_socket: str | None = None) -> Sippy:
        client = Sippy(spath, sent, notify_socket)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.close()


def spaths(relay: Relay) -> dict[str, str]:
    """How a B2BUA config names the relay for each transport (clients.md)."""
    return {
        "unix": f"unix:{relay.cunix}",  # sippy's unix: is a persistent stream client
        "cunix": f"cunix:{relay.cunix}",
        "udp": f"udp:127.0.0.1:{relay.udp_port}",
    }


def ints(reply: str) -> list[int]:
    return [int(x) for x in reply.split()]


TRANSPORTS = ["unix", "cunix", "udp"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_online_and_capabilities_match_relay(
    transport: str, relay_factory: Callable[..., Relay], sippy: Callable[..., Sippy]
) -> None:
    relay = relay_factory("-n", "unix:/tmp/pyrc-nowhere.sock")
    client = sippy(spaths(relay)[transport])
    client.online()
    assert client.rc.caps_done
    # Every probe was asked, and sippy's flag follows the relay's own answer.
    for date, attribute in CAPSTABLE.items():
        assert f"VF {date}" in client.sent
        assert getattr(client.rc, attribute) is (relay.vf(date) == "1"), (date, attribute)
    # The ones B2BUA needs are claimed by this relay (-n given: notification too).
    for attribute in ("stat_supported", "tnot_supported", "sbind_supported", "wdnt_supported"):
        assert getattr(client.rc, attribute), attribute
    # Heartbeat: Ib parsed into the counters the relay reports.
    assert client.run_until(lambda: client.rc.active_sessions is not None)
    assert "Ib" in client.sent
    info = relay.info()
    assert client.rc.active_sessions == info["active sessions"] == 0
    assert client.rc.sessions_created == info["sessions created"]
    assert client.rc.active_streams == info["active streams"]


def test_without_notify_socket_notification_is_not_claimed(
    relay_factory: Callable[..., Relay], sippy: Callable[..., Sippy]
) -> None:
    relay = relay_factory()
    assert relay.vf("20081224") == "0"
    client = sippy(f"cunix:{relay.cunix}", notify_socket="unix:/tmp/pyrc-b2b.sock")
    client.online()
    assert client.rc.tnot_supported is False
    # So sippy leaves the notify arguments out, and the offer works (no E75).
    rs = client.session("nonotify", notify_tag=quote("r 1"))
    ur = client.update(rs, rs.caller, 5000)
    assert client.last() == "U nonotify-0 127.0.0.1 5000 ftag"
    assert ur.rtpproxy_address == "127.0.0.1"
    rs.delete()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_session_lifecycle(
    transport: str, relay_factory: Callable[..., Relay], sippy: Callable[..., Sippy]
) -> None:
    relay = relay_factory()
    client = sippy(spaths(relay)[transport])
    client.online()
    caller, callee = Party(drain_timeout=0.05), Party(drain_timeout=0.05)
    rs = client.session(f"call-{transport}")
    cid = f"call-{transport}-0"

    # Offer from the caller: U with the caller's SDP and only its own tag.
    ur_a = client.update(rs, rs.caller, caller.port)
    assert client.last() == f"U {cid} 127.0.0.1 {caller.port} ftag"
    port_a = ur_a.rtpproxy_port
    assert ur_a.rtpproxy_address == "127.0.0.1" and ur_a.family == "IP4"
    assert relay.info()["active sessions"] == 1
    # Relay's view: the same re-offer gives the same port (leg A belongs to ftag).
    assert relay.ctl(f"U {cid} 127.0.0.1 {caller.port} ftag") == f"{port_a} 127.0.0.1\n"

    # Answer from the callee: also U (never L), tags swapped.
    ur_b = client.update(rs, rs.callee, callee.port)
    assert client.last() == f"U {cid} 127.0.0.1 {callee.port} ttag ftag"
    port_b = ur_b.rtpproxy_port
    assert port_b not in (0, port_a)
    assert not any(c.startswith("L") for c in client.sent)
    assert relay.counters("nsess_created", "nsess_complete") == {
        "nsess_created": "1",
        "nsess_complete": "1",
    }
    assert relay.ctl(f"L {cid} 127.0.0.1 {callee.port} ftag ttag") == f"{port_b} 127.0.0.1\n"

    # Heartbeat follows the relay.
    assert client.run_until(lambda: client.rc.active_sessions == 1)
    assert client.rc.active_streams == relay.info()["active streams"] == 2

    # Media both ways, then the stats query: Q -> 5 integers, same as the relay's own Q.
    caller.send(port_b, 3)
    callee.send(port_a, 2)
    assert wait_for(lambda: callee.total() >= 3 and caller.total() >= 2, 3.0)
    caller.close()
    callee.close()
    stats = client.stats(rs)
    assert client.last() == f"Q {cid} ftag ttag"
    ttl, caller_rcount, callee_rcount, relayed, dropped = stats
    assert (caller_rcount, callee_rcount, relayed, dropped) == (3, 2, 5, 0)
    assert 55 <= ttl <= 60
    relay_view = ints(relay.ctl(f"Q {cid} ftag ttag"))
    assert relay_view[1:] == [3, 2, 5, 0]
    assert abs(relay_view[0] - ttl) <= 1

    # Re-INVITE from the caller with a new port wanted for the callee ("N").
    rs.callee.needs_new_port = True
    ur_a2 = client.update(rs, rs.caller, caller.port)
    assert client.last() == f"UN {cid} 127.0.0.1 {caller.port} ftag ttag"
    port_a2 = ur_a2.rtpproxy_port
    assert port_a2 not in (0, port_a, port_b)
    assert relay.ctl(f"U {cid} 127.0.0.1 {caller.port} ftag ttag") == f"{port_a2} 127.0.0.1\n"
    # A plain re-offer keeps it.
    assert client.update(rs, rs.caller, caller.port).rtpproxy_port == port_a2
    assert client.last() == f"U {cid} 127.0.0.1 {caller.port} ftag ttag"

    # Teardown: D for every media index.
    rs.delete()
    assert client.run_until(lambda: relay.info()["active sessions"] == 0)
    assert f"D {cid} ftag ttag" in client.sent
    assert relay.ctl(f"Q {cid} ftag ttag") == "E50\n"
    assert client.run_until(lambda: client.rc.active_sessions == 0)
    assert client.rc.sessions_created == relay.info()["sessions created"] == 1


def test_two_media_streams_and_stats_failure(
    relay_factory: Callable[..., Relay], sippy: Callable[..., Sippy]
) -> None:
    relay = relay_factory()
    client = sippy(f"udp:127.0.0.1:{relay.udp_port}")
    client.online()
    rs = client.session("multi")
    for index in (0, 1):
        client.update(rs, rs.caller, 6000 + 2 * index, index)
        client.update(rs, rs.callee, 7000 + 2 * index, index)
    assert relay.info()["active sessions"] == 2
    for index in (0, 1):
        assert ints(relay.ctl(f"Q multi-{index} ftag ttag"))[1:] == [0, 0, 0, 0]
    rs.delete()
    assert client.run_until(lambda: relay.info()["active sessions"] == 0)
    assert {"D multi-1 ftag ttag", "D multi-0 ftag ttag"} <= set(client.sent)
    # Q on a gone session: a 1-token reply (E50) is reported as a failure (None).
    gone = client.session("multi")
    assert client.stats(gone) is None
    assert client.last() == "Q multi-0 ftag ttag"
    gone.delete()


def test_local_address_binding_modifiers(
    relay_factory: Callable[..., Relay], sippy: Callable[..., Sippy]
) -> None:
    """VF 20090810: sippy adds ``R<remote-ip>`` and, on Unix sockets, ``L<local-ip>``."""
    relay = relay_factory()
    client = sippy(f"unix:{relay.cunix}")
    client.online()
    assert client.rc.sbind_supported and client.rc.is_local
    rs = client.session("bind")
    rs.caller.laddress = "127.0.0.1"
    rs.callee.raddress = ("127.0.0.1", 5060)  # what b2bua.py sets for the callee
    ur_a = client.update(rs, rs.caller, 5000)
    assert client.last() == "UL127.0.0.1 bind-0 127.0.0.1 5000 ftag"
    ur_b = client.update(rs, rs.callee, 5002)
    assert client.last() == "UR127.0.0.1 bind-0 127.0.0.1 5002 ttag ftag"
    assert ur_a.rtpproxy_address == ur_b.rtpproxy_address == "127.0.0.1"
    assert relay.counters("nsess_complete") == {"nsess_complete": "1"}
    rs.delete()
    assert client.run_until(lambda: relay.info()["active sessions"] == 0)


def test_timeout_notifications_reach_b2bua(
    relay_factory: Callable[..., Relay], sippy: Callable[..., Sippy]
) -> None:
    """``-n tcp:%%CC_SELF%%:PORT`` (VF 20150617) and a unix target; sippy URL-quotes tags."""
    tcp = TcpListener()
    tmp_unix = f"/tmp/pyrc-b2b-{tcp.port}.sock"
    unix = TcpListener(socket.AF_UNIX, tmp_unix)
    try:
        wildcard = f"tcp:%%CC_SELF%%:{tcp.port}"
        relay = relay_factory("-T", "2", "-n", wildcard, "-n", f"unix:{tmp_unix}")
        over_udp = sippy(f"udp:127.0.0.1:{relay.udp_port}", notify_socket=wildcard)
        over_cunix = sippy(f"cunix:{relay.cunix}", notify_socket=f"unix:{tmp_unix}")
        over_udp.online()
        over_cunix.online()
        assert over_udp.rc.tnot_supported and over_udp.rc.wdnt_supported

        rs1 = over_udp.session("nt1", notify_tag=quote("r 17"))
        over_udp.update(rs1, rs1.caller, 5000)
        assert over_udp.last() == f"U nt1-0 127.0.0.1 5000 ftag {wildcard} r%2017"
        rs2 = over_cunix.session("nt2", notify_tag=quote("r 18"))
        over_cunix.update(rs2, rs2.caller, 5000, index=1)
        assert over_cunix.last() == f"U nt2-1 127.0.0.1 5000 ftag unix:{tmp_unix} r%2018%201"
        assert relay.info()["active sessions"] == 2

        # Idle for -T 2: both sessions time out and the decoded tags are delivered.
        assert b"r 17\n" in tcp.wait_data(b"r 17\n", 6.0)
        assert b"r 18 1\n" in unix.wait_data(b"r 18 1\n", 3.0)
        assert tcp.data == b"r 17\n" and unix.data == b"r 18 1\n"
        assert tcp.peers[0][0] == "127.0.0.1"  # type: ignore[index]
        assert relay.info()["active sessions"] == 0
        # B2BUA would now delete; media index 1 only was used for rs2.
        rs1.delete()
        rs2.delete()
    finally:
        tcp.close()
        unix.close()


def test_stream_client_against_one_shot_unix_socket(
    relay_factory: Callable[..., Relay], sippy: Callable[..., Sippy]
) -> None:
    """A relay ``unix:`` socket closes after each reply; sippy reconnects and resends."""
    relay = relay_factory()
    client = sippy(f"unix:{relay.unix}")
    client.online()
    rs = client.session("oneshot")
    port_a = client.update(rs, rs.caller, 5000).rtpproxy_port
    port_b = client.update(rs, rs.callee, 5002).rtpproxy_port
    assert port_a != port_b
    assert client.stats(rs)[1:] == (0, 0, 0, 0)
    assert client.run_until(lambda: client.rc.active_sessions == 1)
    rs.delete()
    assert client.run_until(lambda: relay.info()["active sessions"] == 0)
    # Each command ran exactly once even though each needed a new connection.
    assert relay.counters("nsess_created") == {"nsess_created": "1"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_recording_and_copies_through_sippys_own_calls(
    transport: str,
    relay_factory: Callable[..., Relay],
    sippy: Callable[..., Sippy],
    tmp_path: Path,
) -> None:
    """VF 20071218: sippy turns copying on, and its start_recording()/copy_*() work."""
    record = tmp_path / f"rec-{transport}"
    record.mkdir()
    relay = relay_factory("-r", str(record))
    client = sippy(spaths(relay)[transport])
    client.online()
    assert client.rc.copy_supported
    caller, callee = Party(drain_timeout=0.05), Party(drain_timeout=0.05)
    sink = Party(drain_timeout=0.05)
    rs = client.session(f"rec-{transport}")
    cid = f"rec-{transport}-0"
    port_a = client.update(rs, rs.caller, caller.port).rtpproxy_port
    port_b = client.update(rs, rs.callee, callee.port).rtpproxy_port
    results: list[Any] = []
    rs.start_recording(result_callback=results.append, rflags="")
    assert client.run_until(lambda: results) and results == ["0"]
    assert client.last() == f"R {cid} ftag ttag"
    rs.copy_callee("127.0.0.1", sink.port, results.append)
    assert client.run_until(lambda: len(results) == 2) and results[1] == "0"
    assert client.last() == f"C {cid} udp:127.0.0.1:{sink.port} ttag ftag"
    caller.send(port_b, 4)
    callee.send(port_a, 3)
    assert wait_for(lambda: callee.total() >= 4 and caller.total() >= 3, 3.0)
    assert wait_for(lambda: sink.total() >= 3, 3.0)  # the callee's media, copied
    rs.delete()
    assert client.run_until(lambda: relay.info()["active sessions"] == 0)
    recorded = read_file(record / f"{cid}=ftag.o.rtp")
    assert len(recorded) == 4  # the caller's media, from R
    for party in (caller, callee, sink):
        party.close()


def _prompt_packets(party: Party, count: int, timeout: float = 3.0) -> list[bytes]:
    """Up to ``count`` RTP packets that reach ``party``."""
    got: list[bytes] = []
    party.sock.settimeout(timeout)
    with contextlib.suppress(OSError):
        while len(got) < count:
            got.append(party.sock.recv(2048))
    return got


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_play_and_stop_through_sippys_own_calls(
    transport: str,
    relay_factory: Callable[..., Relay],
    sippy: Callable[..., Sippy],
    tmp_path: Path,
) -> None:
    """VF 20050322: sippy's play_caller()/play_callee() (P<times> … codecs from its SDP)
    and stop_play_callee() (S) against the relay."""
    prompt = tmp_path / "moh"
    Path(f"{prompt}.8").write_bytes(bytes(range(160)) * 5)  # 10 packets of 10 ms PCMA
    relay = relay_factory()
    client = sippy(spaths(relay)[transport])
    client.online()
    caller, callee = Party(drain_timeout=0.05), Party(drain_timeout=0.05)
    rs = client.session(f"play-{transport}")
    cid = f"play-{transport}-0"
    client.update(rs, rs.caller, caller.port)
    client.update(rs, rs.callee, callee.port)
    rs.caller.codecs = rs.callee.codecs = "8,0"  # what sippy takes from each side's SDP
    results: list[Any] = []
    rs.play_caller(str(prompt), times=2, result_callback=results.append)
    assert client.run_until(lambda: results) and results == ["0"]
    assert client.last() == f"P2 {cid} {prompt} 8,0 ftag ttag"
    heard = _prompt_packets(caller, 20)
    assert b"".join(p[12:] for p in heard) == Path(f"{prompt}.8").read_bytes() * 2
    assert {p[1] & 0x7F for p in heard} == {8}
    rs.play_callee(str(prompt), times=-1, result_callback=results.append)
    assert client.run_until(lambda: len(results) == 2) and results[1] == "0"
    assert client.last() == f"P-1 {cid} {prompt} 8,0 ttag ftag"
    assert len(_prompt_packets(callee, 30)) == 30  # a loop: more than the file's 10
    rs.stop_play_callee(result_callback=results.append)
    assert client.run_until(lambda: len(results) == 3) and results[2] == "0"
    assert client.last() == f"S {cid} ttag ftag"
    callee.drain()
    assert _prompt_packets(callee, 1, 0.3) == []  # stopped
    assert relay.counters("nplrs_created", "nplrs_destroyed") == {
        "nplrs_created": "2",
        "nplrs_destroyed": "2",
    }
    rs.delete()
    assert client.run_until(lambda: relay.info()["active sessions"] == 0)
    caller.close()
    callee.close()
