"""The control-socket client of ``pyrtpproxy ctl``: one request, one reply, any transport.

``unix:`` opens one connection per command, like Kamailio and OpenSIPS; ``cunix:`` and
``tcp:`` keep one connection and read line-framed replies; ``udp:`` sends a random
cookie and retransmits with the same cookie, like the SIP proxies (docs/ctl.md).
"""

from __future__ import annotations

import secrets
import select
import socket
import time
from typing import Any

from ..config import ControlKind, ControlSpec
from ..net import family_of

DEFAULT_TIMEOUT = 2.0
UDP_RETRIES = 3  # retransmissions after the first datagram, same cookie (like the SIP proxies)
MAX_REPLY = 65536


class CtlError(Exception):
    """Cannot reach the relay or understand its answer."""


class NotSupported(CtlError):
    """The relay answered ``E0`` to the extension (rtpproxy, or an old pyrtpproxy)."""


def _udp_target(spec: ControlSpec) -> tuple[str, int]:
    if spec.host:
        return spec.host, spec.port
    return ("::1" if spec.kind.ipv6 else "127.0.0.1"), spec.port


def expected_lines(command: str) -> int:
    """Lines in the reply to ``command`` on a stream transport (``I`` is multi-line)."""
    word = command.split(None, 1)[0] if command.strip() else ""
    if word[:1] in ("I", "i"):
        return 6 if "l" in word[1:].lower() else 5
    return 1


class ControlClient:
    """One relay's control socket; persistent for ``cunix:``/``tcp:``, per request
    for ``unix:``, cookie and retransmission for ``udp:``."""

    def __init__(self, spec: ControlSpec, timeout: float = DEFAULT_TIMEOUT) -> None:
        if spec.kind in (ControlKind.STDIO, ControlKind.STDIOC, ControlKind.SYSTEMD):
            raise CtlError(f"cannot connect to {spec}: give the socket's address instead")
        self.spec = spec
        self.timeout = timeout
        self._stream: socket.socket | None = None
        self._pending = b""

    def close(self) -> None:
        """Close a persistent connection."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._pending = b""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, command: str) -> str:
        """Send ``command`` and return the reply without its final newline."""
        data = command.strip().encode("utf-8", "surrogateescape")
        kind = self.spec.kind
        try:
            if kind is ControlKind.UNIX:
                reply = self._one_shot(data)
            elif kind.datagram:
                reply = self._datagram(data)
            else:
                reply = self._line(data, expected_lines(command))
        except OSError as exc:
            self.close()
            raise CtlError(f"{self.spec}: {exc.strerror or exc}") from None
        return reply.decode("utf-8", "replace").rstrip("\n")

    def _one_shot(self, data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.spec.path)
            sock.sendall(data)  # no newline, no shutdown: like Kamailio and OpenSIPS
            chunks: list[bytes] = []
            while sum(len(c) for c in chunks) < MAX_REPLY:
                chunk = sock.recv(MAX_REPLY)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)

    def _connect_stream(self) -> socket.socket:
        if self._stream is not None:
            return self._stream
        kind = self.spec.kind
        if kind is ControlKind.CUNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = self.spec.path
        else:
            target = _udp_target(self.spec)
            sock = socket.socket(family_of(target[0]), socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        self._stream = sock
        return sock

    def _line(self, data: bytes, lines: int) -> bytes:
        sock = self._connect_stream()
        sock.sendall(data + b"\n")
        buffer = self._pending
        got: list[bytes] = []
        deadline = time.monotonic() + self.timeout
        while len(got) < lines:
            end = buffer.find(b"\n")
            if end >= 0:
                line, buffer = buffer[:end], buffer[end + 1 :]
                got.append(line)
                if len(got) == 1 and line.startswith(b"E"):
                    break  # an error is always one line
                continue
            if time.monotonic() > deadline or len(buffer) > MAX_REPLY:
                raise CtlError(f"{self.spec}: no complete reply")
            chunk = sock.recv(MAX_REPLY)
            if not chunk:
                raise CtlError(f"{self.spec}: connection closed by the relay")
            buffer += chunk
        self._pending = buffer
        return b"\n".join(got)

    def _datagram(self, data: bytes) -> bytes:
        cookie = secrets.token_hex(6).encode()
        packet = cookie + b" " + data
        target = _udp_target(self.spec)
        wait = self.timeout / (UDP_RETRIES + 1)
        with socket.socket(family_of(target[0]), socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            for _attempt in range(UDP_RETRIES + 1):
                sock.send(packet)
                deadline = time.monotonic() + wait
                while (left := deadline - time.monotonic()) > 0:
                    ready, _, _ = select.select([sock], [], [], left)
                    if not ready:
                        break
                    try:
                        reply = sock.recv(MAX_REPLY)
                    except ConnectionRefusedError:
                        raise CtlError(f"{self.spec}: nothing listens there") from None
                    word, _, body = reply.partition(b" ")
                    if word == cookie:
                        return body
        raise CtlError(f"{self.spec}: no reply after {UDP_RETRIES + 1} tries")
