"""A live pyrtpproxy on loopback, plus plain control-socket helpers for the client tests.

The relay's own view is always read back over a *separate* control socket (one-shot
``unix:``), independent of whatever client library the test drives.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from loopback import free_port as free_port
from loopback import stop_process
from loopback import wait_for as wait_for

PYRTPPROXY = [sys.executable, "-m", "pyrtpproxy"]
T = TypeVar("T")


@dataclass
class Relay:
    """One relay process with a ``cunix:``, a ``unix:`` and a ``udp:`` control socket."""

    tmp: Path
    udp_port: int
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def cunix(self) -> str:
        return str(self.tmp / "ctl.sock")

    @property
    def unix(self) -> str:
        return str(self.tmp / "u.sock")

    @property
    def log(self) -> Path:
        return self.tmp / "relay.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ctl(self, command: bytes | str) -> str:
        """One command over the relay's one-shot ``unix:`` socket; the whole reply."""
        data = command.encode() if isinstance(command, str) else command
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(self.unix)
            s.sendall(data)
            chunks = []
            while True:  # the relay closes after replying
                chunk = s.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode("latin-1")

    def info(self) -> dict[str, int]:
        """The relay's ``I`` reply as a dict."""
        out: dict[str, int] = {}
        for line in self.ctl("I").splitlines():
            name, _, value = line.partition(":")
            out[name.strip()] = int(value)
        return out

    def counters(self, *names: str) -> dict[str, str]:
        """``G name...`` as a dict."""
        values = self.ctl("G " + " ".join(names)).split()
        assert len(values) == len(names), values
        return dict(zip(names, values, strict=True))

    def vf(self, date: str) -> str:
        return self.ctl(f"VF {date}").strip()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def start_relay(*extra: str) -> Relay:
    """Start a relay (``-l 127.0.0.1`` unless ``extra`` gives its own ``-l``)."""
    # Short path: AF_UNIX paths are limited to ~107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="pyrc-", dir="/tmp"))
    relay = Relay(tmp=tmp, udp_port=free_port(socket.SOCK_DGRAM), extra=list(extra))
    base = random.randrange(42000, 60000, 2)
    local = [] if "-l" in extra else ["-l", "127.0.0.1"]
    args = [
        *PYRTPPROXY, "-f", "-F", "-p", "/dev/null", "-d", "INFO",
        "-s", f"cunix:{relay.cunix}", "-s", f"unix:{relay.unix}",
        "-s", f"udp:127.0.0.1:{relay.udp_port}",
        *local, "-m", str(base), "-M", str(base + 399),
        *extra,
    ]  # fmt: skip
    with relay.log.open("wb") as handle:
        relay.proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp)

    def ready() -> bool:
        assert relay.proc is not None
        if relay.proc.poll() is not None:
            raise RuntimeError(f"relay exited: {relay.log_text()}")
        if not (os.path.exists(relay.unix) and os.path.exists(relay.cunix)):
            return False
        try:
            if relay.ctl("V").strip() != "20040107":
                return False
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.settimeout(0.5)  # the UDP socket may be bound after the Unix ones
                probe.sendto(f"ready{random.random()} V".encode(), ("127.0.0.1", relay.udp_port))
                return probe.recv(256).endswith(b" 20040107\n")
        except OSError:
            return False

    if not wait_for(ready, 10.0):
        relay.stop()
        raise RuntimeError(f"relay did not start: {relay.log_text()}")
    return relay


@contextlib.contextmanager
def running_relay(*extra: str) -> Iterator[Relay]:
    relay = start_relay(*extra)
    try:
        yield relay
    finally:
        relay.stop()
        shutil.rmtree(relay.tmp, ignore_errors=True)


@pytest.fixture
def relay_factory() -> Iterator[Callable[..., Relay]]:
    """Start relays with arbitrary extra options; all are stopped afterwards."""
    started: list[Relay] = []

    def make(*extra: str) -> Relay:
        relay = start_relay(*extra)
        started.append(relay)
        return relay

    try:
        yield make
    finally:
        for relay in started:
            relay.stop()
            shutil.rmtree(relay.tmp, ignore_errors=True)


class TcpListener:
    """A TCP (or Unix) stream listener collecting everything the relay writes to it."""

    def __init__(self, family: int = socket.AF_INET, path: str | None = None) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_UNIX:
            assert path is not None
            self.sock.bind(path)
            self.address: str = path
            self.port = 0
        else:
            self.sock.bind(("127.0.0.1", 0))
            self.port = int(self.sock.getsockname()[1])
            self.address = f"127.0.0.1:{self.port}"
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.conns: list[socket.socket] = []
        self.peers: list[object] = []
        self.data = b""

    def poll(self) -> bytes:
        """Accept and read whatever is pending; returns everything collected so far."""
        with contextlib.suppress(TimeoutError, BlockingIOError):
            conn, peer = self.sock.accept()
            conn.settimeout(0.05)
            self.conns.append(conn)
            self.peers.append(peer)
        for conn in self.conns:
            with contextlib.suppress(TimeoutError, BlockingIOError):
                self.data += conn.recv(4096)
        return self.data

    def wait_data(self, expected: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and expected not in self.data:
            self.poll()
        return self.data

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()
        if self.sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                os.unlink(self.address)
