"""A real pyrtpproxy process on loopback, driven over real sockets.

``relay_factory(*flags)`` starts ``python -m pyrtpproxy`` with a unix, cunix, udp and tcp
control socket (free ports, temp dir, a private media port block), waits until it answers
``V`` and returns a :class:`Relay` handle. On teardown every relay still running gets
SIGTERM (its PID only); the test fails unless it exits 0 and removes its socket files.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from loopback import free_port as free_port
from loopback import rtp_packet as rtp_packet
from loopback import udp_port_taken
from loopback import wait_for as wait_for

PYRTPPROXY = [sys.executable, "-m", "pyrtpproxy"]
VERSION = "20040107"
REPLY_TIMEOUT = 3.0
T = TypeVar("T")

# Media port blocks below the kernel's ephemeral range (32768+), one per relay started.
_PORT_AREA = (10000, 32000)
# Start each test process at its own place in the area, so suites run side by side (two
# checkouts, or CI next to a developer) rarely ask for the same ports.
_next_port = _PORT_AREA[0] + (os.getpid() % 11) * 2000


def next_port_block(size: int = 200) -> tuple[int, int]:
    """A media port range nobody else in this run uses (wraps around the private area)."""
    global _next_port
    if _next_port + size > _PORT_AREA[1]:
        _next_port = _PORT_AREA[0]
    start = _next_port
    _next_port += size
    return start, start + size - 1


def ipv6_available() -> bool:
    """True if ::1 can be bound."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def rtcp_packet(ssrc: int = 0x11223344) -> bytes:
    """A minimal RTCP receiver report (RC=0)."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


class LineClient:
    """A persistent newline-framed control connection (cunix, tcp, tcp6)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(REPLY_TIMEOUT)
        self._buffer = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def readline(self, timeout: float = REPLY_TIMEOUT) -> str:
        """One reply line without its newline; raises ``TimeoutError``/``EOFError``."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply line")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("latin-1")

    def command(self, cmd: bytes | str) -> str:
        self.send((cmd.encode() if isinstance(cmd, str) else cmd) + b"\n")
        return self.readline()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class Relay:
    """Handle on one relay process."""

    tmp: Path
    args: list[str]
    unix_path: str
    cunix_path: str
    udp_port: int
    tcp_port: int
    port_min: int
    port_max: int
    log_path: Path
    pidfile: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    _cookies: Iterator[int] = field(default_factory=itertools.count)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- control clients -------------------------------------------------------------

    def unix(self, cmd: bytes | str, path: str | None = None) -> str:
        """Kamailio style: connect, send without newline, ONE recv of <= 255 bytes, close."""
        data = cmd.encode() if isinstance(cmd, str) else cmd
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path or self.unix_path)  # blocking, waits out a full backlog
            sock.settimeout(REPLY_TIMEOUT)
            sock.sendall(data)
            reply = sock.recv(255)
        return reply.decode("latin-1")

    def cmd(self, cmd: bytes | str) -> str:
        """:meth:`unix` with the trailing newline checked and stripped."""
        reply = self.unix(cmd)
        assert reply.endswith("\n"), f"reply {reply!r} to {cmd!r} lacks its newline"
        return reply[:-1]

    def new_cookie(self) -> str:
        return f"ck{os.getpid()}_{next(self._cookies)}"

    def udp_raw(
        self,
        data: bytes,
        host: str = "127.0.0.1",
        port: int | None = None,
        family: int = socket.AF_INET,
    ) -> bytes:
        """Send one datagram, return the one reply datagram."""
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(REPLY_TIMEOUT)
            sock.bind((host, 0))
            sock.sendto(data, (host, port or self.udp_port))
            reply, src = sock.recvfrom(65536)
        assert src[:2] == (host, port or self.udp_port), f"reply came from {src}"
        return reply

    def udp(self, cmd: str, cookie: str | None = None) -> str:
        """``cookie cmd`` over UDP; returns the full reply (cookie included, no newline)."""
        cookie = cookie or self.new_cookie()
        reply = self.udp_raw(f"{cookie} {cmd}".encode())
        assert reply.endswith(b"\n"), reply
        return reply[:-1].decode("latin-1")

    def cunix(self) -> LineClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.cunix_path)
        return LineClient(sock)

    def tcp(self, host: str = "127.0.0.1", port: int | None = None) -> LineClient:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(REPLY_TIMEOUT)
        sock.connect((host, port or self.tcp_port))
        return LineClient(sock)

    def counter(self, *names: str) -> list[int]:
        """Global counters via ``G`` over unix."""
        return [int(float(v)) for v in self.cmd("G " + " ".join(names)).split()]

    # --- process ---------------------------------------------------------------------

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def idle_fd_count(self) -> int:
        """Descriptors of the relay with no session, once a leg has been opened: the
        spare media sockets it keeps ready from then on are part of the baseline."""
        port = parse_port(self.cmd("U fd-baseline 127.0.0.1 9 fd-baseline"))
        assert self.cmd("D fd-baseline fd-baseline") == "0"
        # the leg's sockets close in a later turn of the relay's loop than the D's reply,
        # which a command sent meanwhile does not wait for: the ports themselves tell
        assert wait_for(lambda: not udp_port_taken(port) and not udp_port_taken(port + 1), 3.0)
        return self.fd_count()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float = 5.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"relay {self.pid} did not exit within {timeout}s\n{self.log_text()}")

    def kill(self) -> None:
        """SIGKILL our relay's PID (a crash): nothing of its shutdown runs."""
        assert self.proc is not None
        self.stopped = True
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> int:
        """SIGTERM our relay's PID, wait, and require a clean exit and socket removal."""
        if self.stopped:
            return 0
        self.stopped = True
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        rc = self.wait_exit()
        assert rc == 0, f"relay exited with {rc}\n{self.log_text()}"
        for path in (self.unix_path, self.cunix_path, str(self.pidfile)):
            assert not os.path.exists(path), f"{path} left behind"
        return rc


RelayFactory = Callable[..., Relay]


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """Start relays with extra flags; all are stopped and checked at teardown."""
    started: list[Relay] = []

    def start(
        *extra: str,
        listen: str = "127.0.0.1",
        ttl: int = 60,
        ports: int = 200,
        wrapper: tuple[str, ...] = (),
        like: Relay | None = None,
    ) -> Relay:
        """``wrapper`` goes before the command (``ip netns exec NS``, say); it must exec.
        ``like``: a relay with the same command line (sockets, ports, flags) as that one,
        started again after it was killed or stopped, or next to it (a takeover)."""
        index = len(started)
        if like is None:
            port_min, port_max = next_port_block(ports)
            relay = Relay(
                tmp=tmp_path,
                args=[],
                unix_path=str(tmp_path / f"r{index}.sock"),
                cunix_path=str(tmp_path / f"c{index}.sock"),
                udp_port=free_port(socket.SOCK_DGRAM),
                tcp_port=free_port(),
                port_min=port_min,
                port_max=port_max,
                log_path=tmp_path / f"relay{index}.log",
                pidfile=tmp_path / f"relay{index}.pid",
            )
            args = ["-f", "-F", "-p", str(relay.pidfile), "-d", "INFO", "-T", str(ttl),
                    "-m", str(port_min), "-M", str(port_max)]  # fmt: skip
            if listen:
                args += ["-l", listen]
            args += [
                "-s", f"unix:{relay.unix_path}",
                "-s", f"cunix:{relay.cunix_path}",
                "-s", f"udp:127.0.0.1:{relay.udp_port}",
                "-s", f"tcp:127.0.0.1:{relay.tcp_port}",
            ]  # fmt: skip
            args += list(extra)
            relay.args = args
        else:
            relay = dataclasses.replace(
                like,
                log_path=tmp_path / f"relay{index}.log",
                proc=None,
                stopped=False,
                _cookies=itertools.count(),
            )
        with relay.log_path.open("wb") as log:
            relay.proc = subprocess.Popen(
                [*wrapper, *PYRTPPROXY, *relay.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=tmp_path,
            )
        started.append(relay)

        def answers_v() -> bool:
            if relay.proc is not None and relay.proc.poll() is not None:
                raise RuntimeError(f"relay exited early: {relay.log_text()}")
            # The start-up line follows the binding of every control socket (the Unix
            # one answers while the others may still be opening).
            if " started, media ports " not in relay.log_text():
                return False
            try:
                return relay.unix("V") == VERSION + "\n"
            except OSError:
                return False

        if not wait_for(answers_v, 10.0, 0.05):
            raise RuntimeError(f"relay did not answer V: {relay.log_text()}")
        return relay

    yield start
    errors: list[str] = []
    for relay in started:
        try:
            relay.stop()
        except AssertionError as exc:
            errors.append(str(exc))
        finally:
            if relay.proc is not None and relay.proc.poll() is None:
                relay.proc.kill()
                relay.proc.wait(5)
    if errors:
        pytest.fail("relay teardown: " + "; ".join(errors))


@pytest.fixture
def relay(relay_factory: RelayFactory) -> Relay:
    """A relay with default flags (-l 127.0.0.1 -T 60)."""
    return relay_factory()


class Party:
    """A UDP endpoint on loopback playing one side of a call (RTP on P, RTCP on P+1)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, with_rtcp: bool = True) -> None:
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.family = family
        for _attempt in range(50):
            self.rtp = socket.socket(family, socket.SOCK_DGRAM)
            self.rtp.bind((host, port))
            self.port = int(self.rtp.getsockname()[1])
            if not with_rtcp:
                self.rtcp: socket.socket | None = None
                break
            self.rtcp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                self.rtcp.bind((host, self.port + 1))
                break
            except OSError:
                self.rtcp.close()
                self.rtp.close()
                if port:
                    raise
        else:
            raise RuntimeError("no free port pair")
        for sock in self.sockets():
            sock.setblocking(False)

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.rtp, self.rtcp) if s is not None]

    def send(self, port: int, data: bytes, host: str | None = None) -> None:
        self.rtp.sendto(data, (host or self.host, port))

    def send_rtcp(self, port: int, data: bytes, host: str | None = None) -> None:
        assert self.rtcp is not None
        self.rtcp.sendto(data, (host or self.host, port))

    @staticmethod
    def _recv(sock: socket.socket, timeout: float) -> tuple[bytes, tuple[str, int]] | None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                data, src = sock.recvfrom(65536)
                return data, (str(src[0]), int(src[1]))
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.002)

    def recv(self, timeout: float = 1.0) -> tuple[bytes, tuple[str, int]] | None:
        return self._recv(self.rtp, timeout)

    def recv_rtcp(self, timeout: float = 1.0) -> tuple[bytes, tuple[str, int]] | None:
        assert self.rtcp is not None
        return self._recv(self.rtcp, timeout)

    def drain(self, settle: float = 0.05) -> list[tuple[bytes, tuple[str, int]]]:
        """Everything that arrives on RTP until ``settle`` seconds of silence."""
        got: list[tuple[bytes, tuple[str, int]]] = []
        while True:
            item = self._recv(self.rtp, settle)
            if item is None:
                return got
            got.append(item)

    def close(self) -> None:
        for sock in self.sockets():
            sock.close()


@pytest.fixture
def parties() -> Iterator[Callable[..., Party]]:
    """Factory of :class:`Party` endpoints, closed at teardown."""
    made: list[Party] = []

    def make(host: str = "127.0.0.1", port: int = 0, with_rtcp: bool = True) -> Party:
        party = Party(host, port, with_rtcp)
        made.append(party)
        return party

    yield make
    for party in made:
        party.close()


def parse_port(reply: str) -> int:
    """The port of a ``PORT [ADDR [6]]`` reply."""
    first = reply.split()[0]
    assert first.isdigit() and int(first) > 0, f"not a port reply: {reply!r}"
    return int(first)
