"""Helpers shared by the tests that drive a real relay over loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port(kind: int = socket.SOCK_STREAM, family: int = socket.AF_INET) -> int:
    """A currently unused loopback port."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, kind) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def udp_port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a UDP socket holds ``host``:``port`` (a probe cannot bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
        return False


def unix_command(path: str | os.PathLike[str], command: str) -> str:
    """One command over a ``unix:`` control socket at ``path``; the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(command.encode())
        return sock.recv(1000).decode()


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, step: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def rtp_packet(seq: int, ssrc: int = 0x11223344, ts: int | None = None, pt: int = 0) -> bytes:
    """An RTP v2 packet with a 160-byte payload (G.711, 20 ms): 172 bytes."""
    stamp = seq * 160 if ts is None else ts
    header = struct.pack("!BBHII", 0x80, pt & 0x7F, seq & 0xFFFF, stamp & 0xFFFFFFFF, ssrc)
    return header + bytes([seq & 0xFF]) * 160


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a relay we started (by its PID), then kill it if it does not exit in 5 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def unix_relay(
    directory: Path, ports: tuple[int, int], *flags: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A relay process of our own on ``directory/ctl.sock`` (media on 127.0.0.1, ports
    ``ports``), once its socket is there; it must exit cleanly on SIGTERM."""
    sock = directory / "ctl.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyrtpproxy", "-f", "-F", "-l", "127.0.0.1",
         "-s", f"unix:{sock}", "-m", str(ports[0]), "-M", str(ports[1]),
         "-p", str(directory / "pid"), "-d", "ERR", *flags],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: sock.exists() or proc.poll() is not None), "no control socket"
        assert proc.poll() is None, f"the relay exited: {proc.returncode}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


class Party:
    """A UDP endpoint on 127.0.0.1 that plays one side of a call: sends RTP, counts what
    comes back (``received``, over the party's life)."""

    def __init__(self, drain_timeout: float = 0.2) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.drain_timeout = drain_timeout
        self.received = 0

    def send(self, port: int, count: int, start: int = 0) -> None:
        for seq in range(start, start + count):
            self.sock.sendto(rtp_packet(seq), ("127.0.0.1", port))

    def drain(self) -> int:
        """Read what arrives until ``drain_timeout`` passes quietly; how many this call read."""
        got = 0
        self.sock.settimeout(self.drain_timeout)
        while True:
            try:
                self.sock.recv(2048)
            except OSError:
                self.received += got
                return got
            got += 1

    def total(self) -> int:
        """Drain, then return everything received so far."""
        self.drain()
        return self.received

    def close(self) -> None:
        self.sock.close()
