"""Control socket listeners: unix, cunix, tcp/tcp6, udp/udp6, stdio, systemd.

Framing differs per transport; everything after framing goes through
:class:`~pyrtpproxy.control.processor.CommandProcessor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from typing import cast

from ..config import ControlKind, ControlSpec
from ..engine.counters import Counters
from ..engine.engine import RequestContext
from ..net import family_of
from .processor import MAX_COMMAND, CommandProcessor, RateLimitedLog

log = logging.getLogger("pyrtpproxy.control")

MAX_STREAM_CONNECTIONS = 100
ONE_SHOT_IDLE = 10.0  # seconds a unix: connection may stay silent before it is closed
REFUSED_LOG_WINDOW = 10.0  # seconds: one line about refused connections per window
MAX_LINE = 8192
LOCAL_CONTEXT = RequestContext("127.0.0.1")
SYSTEMD_FIRST_FD = 3
MAX_CLIENT_HOSTS = 1024  # request contexts of UDP client hosts remembered


class OneShotProtocol(asyncio.Protocol):
    """``unix:``: one read is one command; reply, then close. Never waits for EOF.

    A connection that sends nothing for ``idle`` seconds is closed: clients write their
    command right after connecting, and an idle one would hold a descriptor for ever.
    """

    def __init__(
        self,
        processor: CommandProcessor,
        loop: asyncio.AbstractEventLoop,
        idle: float = ONE_SHOT_IDLE,
    ) -> None:
        self._processor = processor
        self._idle = idle
        # Given, not asked for: asyncio.get_running_loop() costs a getpid() system call,
        # which here would be one per command.
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = self._loop.call_later(self._idle, self._close)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(self._processor.handle(data[:MAX_COMMAND], LOCAL_CONTEXT))
        self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class LineProtocol(asyncio.Protocol):
    """Persistent stream transports: newline-framed, pipelined, replies in order."""

    def __init__(
        self,
        processor: CommandProcessor,
        connections: set[LineProtocol],
        on_eof: Callable[[], None] | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self._processor = processor
        self._connections = connections
        self._on_eof = on_eof
        self._on_refused = on_refused
        self._buffer = bytearray()
        self._transport: asyncio.WriteTransport | None = None
        self._context = LOCAL_CONTEXT

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.WriteTransport, transport)
        if len(self._connections) >= MAX_STREAM_CONNECTIONS:
            transport.close()
            if self._on_refused is not None:
                self._on_refused()
            return
        self._transport = transport
        self._connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._context = RequestContext(str(peer[0]))

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        self._buffer += data
        replies: list[bytes] = []
        too_long = False
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                too_long = len(self._buffer) > MAX_LINE
                break
            if end > MAX_LINE:  # would not fit rtpproxy's input buffer: no reply, drop
                too_long = True
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            replies.append(self._processor.handle(line, self._context))
        if replies:
            transport.write(b"".join(replies))
        if too_long:
            log.warning("control line longer than %d bytes, dropping the connection", MAX_LINE)
            self._buffer.clear()
            transport.close()

    def eof_received(self) -> bool | None:
        if self._on_eof is not None:
            self._on_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None


class DatagramProtocol(asyncio.DatagramProtocol):
    """``udp:``/``udp6:``: one datagram per command, cookie echoed, retransmissions cached."""

    def __init__(self, processor: CommandProcessor) -> None:
        self._processor = processor
        self._transport: asyncio.DatagramTransport | None = None
        # a client sends from one host or a few: one context each, not one per datagram
        self._contexts: dict[str | int, RequestContext] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self._transport is None:
            return
        host = addr[0]
        context = self._contexts.get(host)
        if context is None:
            if len(self._contexts) >= MAX_CLIENT_HOSTS:
                self._contexts.clear()
            context = self._contexts[host] = RequestContext(str(host))
        self._transport.sendto(self._processor.handle_datagram(data, context), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("control socket error: %s", exc)


class ControlServer:
    """Opens every ``-s`` listener and closes them (removing socket files) on shutdown."""

    def __init__(
        self,
        processor: CommandProcessor,
        specs: tuple[ControlSpec, ...],
        *,
        uid: int | None = None,
        gid: int | None = None,
        mode: int | None = None,
        on_stdin_eof: Callable[[], None] | None = None,
        counters: Counters | None = None,
    ) -> None:
        self._processor = processor
        self._counters = counters or Counters()
        self._specs = specs
        self._uid, self._gid, self._mode = uid, gid, mode
        self._on_stdin_eof = on_stdin_eof
        self._closers: list[Callable[[], None]] = []
        self._unix_paths: list[str] = []
        self._connections: set[LineProtocol] = set()
        self._listening: list[tuple[str, Callable[[], int]]] = []  # -s value, its fd
        self._refused_log = RateLimitedLog(
            time.monotonic, burst=1, period=REFUSED_LOG_WINDOW, what="refused control connections"
        )

    async def start(self, inherited: dict[str, list[socket.socket]] | None = None) -> None:
        """Bind and listen on every control socket. ``inherited``: listening sockets a
        previous relay handed over, by the ``-s`` value they serve; they are served
        instead of binding anew (a path or port stays the same socket, so nothing that
        was queued on it is lost), those no ``-s`` names any more too."""
        passed = dict(inherited or {})
        for spec in self._specs:
            await self._open(spec, passed.pop(str(spec), None))
            log.info("listening for commands on %s", spec)
        for name, socks in passed.items():
            await self._open(ControlSpec.parse(name), socks)
            log.warning("serving the previous relay's control socket %s as well", name)

    def hand_over(self) -> list[tuple[str, int]]:
        """For a successor: a duplicate of every listening socket with the ``-s`` value
        it serves; then stop serving them, leaving socket files in place. The kernel
        keeps queueing connections and datagrams on them meanwhile."""
        sockets = [(name, os.dup(fileno())) for name, fileno in self._listening]
        self.close(unlink=False)
        return sockets

    async def _open(self, spec: ControlSpec, passed: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        kind = spec.kind
        name = str(spec)
        if kind in (ControlKind.UNIX, ControlKind.CUNIX):
            sock = passed[0] if passed else self._unix_listener(spec.path)
            if passed:
                self._unix_paths.append(spec.path)
            factory: Callable[[], asyncio.Protocol] = (
                (lambda: OneShotProtocol(self._processor, loop))
                if kind is ControlKind.UNIX
                else self._line_protocol
            )
            server = await loop.create_unix_server(factory, sock=sock)
            self._serving(name, server)
        elif kind in (ControlKind.TCP, ControlKind.TCP6):
            if passed:
                server = await loop.create_server(self._line_protocol, sock=passed[0])
            else:
                server = await loop.create_server(
                    self._line_protocol,
                    spec.bind_host,
                    spec.port,
                    family=family_of(spec.bind_host),
                    reuse_address=True,
                )
            self._serving(name, server)
        elif kind.datagram:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: DatagramProtocol(self._processor),
                **(
                    {"sock": passed[0]}
                    if passed
                    else {
                        "local_addr": (spec.bind_host, spec.port),
                        "family": family_of(spec.bind_host),
                    }
                ),
            )
            self._closers.append(transport.close)
            self._listening.append((name, transport.get_extra_info("socket").fileno))
        elif kind in (ControlKind.STDIO, ControlKind.STDIOC):
            await self._open_stdio()
        elif kind is ControlKind.SYSTEMD:
            await self._open_systemd(passed)

    def _serving(self, name: str, server: asyncio.AbstractServer) -> None:
        self._closers.append(server.close)
        for sock in getattr(server, "sockets", ()):
            self._listening.append((name, sock.fileno))

    def _line_protocol(self) -> LineProtocol:
        return LineProtocol(self._processor, self._connections, on_refused=self._refuse)

    def _refuse(self) -> None:
        self._counters.relay.control_connections_refused += 1
        self._refused_log.warning(
            "%d control connections open, closing new ones", MAX_STREAM_CONNECTIONS
        )

    def _unix_listener(self, path: str) -> socket.socket:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            if self._uid is not None or self._gid is not None:
                os.chown(
                    path,
                    -1 if self._uid is None else self._uid,
                    -1 if self._gid is None else self._gid,
                )
            if self._gid is not None:
                os.chmod(path, self._mode if self._mode is not None else 0o755)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._unix_paths.append(path)
        return sock

    async def _open_stdio(self) -> None:
        loop = asyncio.get_running_loop()
        write_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)

        class StdioProtocol(LineProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self._transport = write_transport

        protocol = StdioProtocol(self._processor, set(), on_eof=self._on_stdin_eof)
        await loop.connect_read_pipe(lambda: protocol, sys.stdin.buffer)

    async def _open_systemd(self, passed: list[socket.socket] | None = None) -> None:
        """Serve the sockets systemd passed: a UDP one speaks the cookie protocol like
        ``udp:``, a Unix or TCP stream one the line protocol like ``cunix:``/``tcp:``.
        After a hand-over the previous relay's systemd sockets come as ``passed``."""
        if passed is None:
            count = int(os.environ.get("LISTEN_FDS", "0"))
            if os.environ.get("LISTEN_PID") not in (None, str(os.getpid())) or count < 1:
                raise OSError("systemd: no socket was passed (LISTEN_FDS)")
            fds = range(SYSTEMD_FIRST_FD, SYSTEMD_FIRST_FD + count)
            passed = [socket.socket(fileno=fd) for fd in fds]
        loop = asyncio.get_running_loop()
        name = str(ControlSpec(ControlKind.SYSTEMD))
        for sock in passed:
            inet = sock.family in (socket.AF_INET, socket.AF_INET6)
            if sock.type == socket.SOCK_DGRAM and inet:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: DatagramProtocol(self._processor), sock=sock
                )
                self._closers.append(transport.close)
                self._listening.append((name, sock.fileno))
            elif sock.type == socket.SOCK_STREAM and (inet or sock.family == socket.AF_UNIX):
                if inet:
                    server = await loop.create_server(self._line_protocol, sock=sock)
                else:
                    server = await loop.create_unix_server(self._line_protocol, sock=sock)
                self._serving(name, server)
            else:  # no transport of protocol.md §1 is like it (Unix datagram, seqpacket, ...)
                kind = f"{sock.family.name} {sock.type.name}"
                raise OSError(
                    f"systemd: socket {sock.fileno()} is {kind}, not UDP, TCP or Unix stream"
                )

    def close(self, unlink: bool = True) -> None:
        """Stop listening, drop connections and remove the socket files (unless a
        successor serves them now)."""
        for closer in self._closers:
            closer()
        self._closers.clear()
        self._listening.clear()
        for connection in list(self._connections):
            if connection._transport is not None:
                connection._transport.close()
        for path in self._unix_paths if unlink else ():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._unix_paths.clear()
