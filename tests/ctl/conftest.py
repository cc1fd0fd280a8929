"""A scripted stand-in for a relay's control socket on loopback, for the ctl unit tests."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyrtpproxy.config import ControlSpec

Answer = Callable[[bytes], bytes | None]  # command -> reply without newline; None: stay silent


class FakeRelay:
    """Serves one control transport from a thread, answering each command with ``answer``.

    ``received`` keeps what arrived exactly as framed on the wire (cookie, newline), and
    ``accepted`` counts stream connections. ``drop`` datagrams are ignored first, to make
    the client retransmit.
    """

    def __init__(self, kind: str, tmp: Path, answer: Answer, drop: int = 0) -> None:
        self.kind = kind
        self.answer = answer
        self.drop = drop
        self.received: list[bytes] = []
        self.accepted = 0
        self._stop = threading.Event()
        if kind in ("unix", "cunix"):
            path = str(tmp / f"{kind}.sock")  # short: AF_UNIX paths stop at 107 bytes
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
            self.spec = ControlSpec.parse(f"{kind}:{path}")
        elif kind == "tcp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.spec = ControlSpec.parse(f"tcp:127.0.0.1:{self.sock.getsockname()[1]}")
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.spec = ControlSpec.parse(f"udp:127.0.0.1:{self.sock.getsockname()[1]}")
        if kind != "udp":
            self.sock.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _ready(self, sock: socket.socket) -> bool:
        while not self._stop.is_set():
            if select.select([sock], [], [], 0.05)[0]:
                return True
        return False

    def _serve(self) -> None:
        if self.kind == "udp":
            while self._ready(self.sock):
                data, peer = self.sock.recvfrom(65536)
                self.received.append(data)
                if self.drop > 0:
                    self.drop -= 1
                    continue
                cookie, _, command = data.partition(b" ")
                reply = self.answer(command)
                if reply is not None:
                    self.sock.sendto(cookie + b" " + reply + b"\n", peer)
            return
        while self._ready(self.sock):
            conn, _ = self.sock.accept()
            self.accepted += 1
            with conn:
                self._stream(conn)

    def _stream(self, conn: socket.socket) -> None:
        buffer = b""
        while self._ready(conn):
            chunk = conn.recv(65536)
            if not chunk:
                return
            if self.kind == "unix":  # one command per connection, no newline
                self.received.append(chunk)
                reply = self.answer(chunk)
                if reply is not None:
                    conn.sendall(reply + b"\n")
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.received.append(line + b"\n")
                reply = self.answer(line)
                if reply is None:
                    return  # hang up without answering
                conn.sendall(reply + b"\n")


FakeRelayFactory = Callable[..., FakeRelay]


@pytest.fixture
def fake_relay(tmp_path: Path) -> Iterator[FakeRelayFactory]:
    """``fake_relay(kind, answer, drop=0)``: a started :class:`FakeRelay`, closed afterwards."""
    started: list[FakeRelay] = []

    def start(kind: str, answer: Answer, drop: int = 0) -> FakeRelay:
        relay = FakeRelay(kind, tmp_path, answer, drop)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.close()
