"""ctl/client.py: framing per transport, persistence, UDP cookies and retransmission, errors."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from pyrtpproxy.config import ControlSpec
from pyrtpproxy.ctl.client import ControlClient, CtlError, expected_lines

from .conftest import FakeRelayFactory

INFO = b"sessions created: 0\nactive sessions: 0\nactive streams: 0\npackets received: 0\nx: 0"


def answer(command: bytes) -> bytes | None:
    if command == b"V":
        return b"20040107"
    if command == b"I":
        return INFO
    if command == b"Il":
        return INFO + b"\nlast: 0"
    if command == b"Ix":
        return b"E1"
    if command == b"hangup":
        return None
    return b"echo " + command


@pytest.mark.parametrize(
    ("kind", "framed"),
    [("unix", b"V"), ("cunix", b"V\n"), ("tcp", b"V\n")],
)
def test_stream_framing(fake_relay: FakeRelayFactory, kind: str, framed: bytes) -> None:
    relay = fake_relay(kind, answer)
    with ControlClient(relay.spec) as client:
        assert client.request("V") == "20040107"
        assert client.request("  G  x \n") == "echo G  x"
    assert relay.received[0] == framed
    # unix: a connection per command (like Kamailio); cunix/tcp: one persistent connection
    assert relay.accepted == (2 if kind == "unix" else 1)


@pytest.mark.parametrize("kind", ["cunix", "tcp"])
def test_multi_line_info_stays_in_step(fake_relay: FakeRelayFactory, kind: str) -> None:
    relay = fake_relay(kind, answer)
    with ControlClient(relay.spec) as client:
        assert client.request("I") == INFO.decode()
        assert client.request("Il") == INFO.decode() + "\nlast: 0"
        assert client.request("Ix") == "E1"  # an error ends a multi-line reply at once
        assert client.request("V") == "20040107"


def test_udp_cookie_and_retransmission(fake_relay: FakeRelayFactory) -> None:
    relay = fake_relay("udp", answer, drop=2)
    with ControlClient(relay.spec, timeout=2.0) as client:
        assert client.request("V") == "20040107"
    assert len(relay.received) == 3
    cookies = {data.partition(b" ")[0] for data in relay.received}
    assert len(cookies) == 1 and all(data.endswith(b" V") for data in relay.received)
    cookie = cookies.pop()
    assert len(cookie) == 12 and int(cookie, 16) >= 0


def test_udp_reply_with_a_foreign_cookie_is_ignored() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        spec = ControlSpec.parse(f"udp:127.0.0.1:{server.getsockname()[1]}")
        client = ControlClient(spec, timeout=2.0)

        def serve() -> None:
            data, peer = server.recvfrom(1024)
            cookie = data.partition(b" ")[0]
            server.sendto(b"stale E8\n", peer)
            server.sendto(cookie + b" 1\n", peer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert client.request("VF 20040107") == "1"
        thread.join(5)


def test_udp_gives_up_after_four_tries(fake_relay: FakeRelayFactory) -> None:
    relay = fake_relay("udp", lambda command: None)
    started = time.monotonic()
    with pytest.raises(CtlError, match="no reply after 4 tries"):
        ControlClient(relay.spec, timeout=0.4).request("V")
    assert time.monotonic() - started < 2.0
    assert len(relay.received) == 4


def test_udp_nothing_listening() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CtlError, match="nothing listens there"):
        ControlClient(ControlSpec.parse(f"udp:127.0.0.1:{port}"), timeout=1.0).request("V")


def test_stream_closed_by_the_relay(fake_relay: FakeRelayFactory) -> None:
    relay = fake_relay("cunix", answer)
    with ControlClient(relay.spec) as client, pytest.raises(CtlError, match="closed by the relay"):
        client.request("hangup")


def test_unreachable_socket_is_a_ctl_error(tmp_path: Path) -> None:
    for spec in (f"unix:{tmp_path}/none.sock", f"cunix:{tmp_path}/none.sock"):
        with pytest.raises(CtlError, match=r"none\.sock"):
            ControlClient(ControlSpec.parse(spec)).request("V")


@pytest.mark.parametrize("spec", ["stdio:", "stdioc:", "systemd:"])
def test_unreachable_kinds_are_refused(spec: str) -> None:
    with pytest.raises(CtlError, match="give the socket's address"):
        ControlClient(ControlSpec.parse(spec))


@pytest.mark.parametrize(
    ("command", "lines"),
    [("V", 1), ("", 1), ("I", 5), ("i", 5), ("Is", 5), ("Il", 6), ("IL", 6), ("U c a p t", 1)],
)
def test_expected_lines(command: str, lines: int) -> None:
    assert expected_lines(command) == lines
