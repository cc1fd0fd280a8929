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
from ..net import RawSocket, family_of
from .processor import MAX_COMMAND, CommandProcessor, RateLimitedLog

log = logging.getLogger("pyrtpproxy.control")

MAX_STREAM_CONNECTIONS = 100
ONE_SHOT_IDLE = 10.0  # seconds a unix: connection may stay silent before it is closed
ACCEPT_PAUSE = 0.1  # seconds a unix: listener rests after a failed accept (EMFILE...)
REFUSED_LOG_WINDOW = 10.0  # seconds: one line about refused connections per window
MAX_LINE = 8192
LOCAL_CONTEXT = RequestContext("127.0.0.1")
SYSTEMD_FIRST_FD = 3
MAX_CLIENT_HOSTS = 1024  # request contexts of UDP client hosts remembered
# The receive buffer of a UDP control socket the relay binds: a burst from many proxy
# workers while the relay is busy queues (about 2500 commands) instead of overflowing the
# default (about 250). Without CAP_NET_ADMIN, net.core.rmem_max caps it.
CONTROL_RECEIVE_BUFFER = 1 << 20
SO_RCVBUFFORCE = 33  # Linux: SO_RCVBUF beyond net.core.rmem_max, with CAP_NET_ADMIN


class OneShotListener:
    """``unix:``: one read is one command; reply, then close. Never waits for EOF.

    Served straight off the listening socket, without a transport and protocol per
    connection: Kamailio and OpenSIPS connect once per command, so what a connection
    costs is what each command costs. A client writes its command right after
    connecting, and it is usually there when the connection is accepted; if not, the
    connection waits for it (at most ``limit`` connections wait, each at most ``idle``
    seconds, then it is closed), and so does a reply too big for the socket's buffer.
    """

    def __init__(
        self,
        sock: socket.socket,
        processor: CommandProcessor,
        loop: asyncio.AbstractEventLoop,
        *,
        idle: float = ONE_SHOT_IDLE,
        limit: int = MAX_STREAM_CONNECTIONS,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._processor = processor
        self._loop = loop
        self._idle = idle
        self._limit = limit
        self._on_refused = on_refused
        # by fd: the connection, its idle timer, and what is left to send (None: the
        # command has not arrived yet)
        self._waiting: dict[int, tuple[RawSocket, asyncio.TimerHandle, bytes | None]] = {}
        self._resume: asyncio.TimerHandle | None = None  # accepting again after a failure
        self._accept_log = RateLimitedLog(
            time.monotonic, burst=1, period=REFUSED_LOG_WINDOW, what="accept failures"
        )
        loop.add_reader(self._fd, self._accept)

    @property
    def waiting(self) -> int:
        """Connections whose command, or the rest of whose reply, is still to come."""
        return len(self._waiting)

    def fileno(self) -> int:
        """The listening socket's descriptor (for a hand-over), -1 once closed."""
        return self._sock.fileno()

    def close(self) -> None:
        """Stop accepting; close the listening socket and every waiting connection."""
        if self._sock.fileno() < 0:
            return
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._loop.remove_reader(self._fd)
        self._sock.close()
        for fd in list(self._waiting):
            self._forget(fd)[0].close()

    def _accept(self) -> None:
        # One connection per wakeup: then the event loop's other ready work (UDP
        # commands, media) has its turn; another waiting connection keeps the listening
        # socket readable. The C type's accept, and the connection as that type
        # (net.RawSocket): socket.socket's accept() and close() are Python code around
        # them, 2 µs of every command.
        try:
            fd, _address = self._sock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:  # out of descriptors, say: it would fail at once again
            self._pause(exc)
            return
        self._read(RawSocket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd))

    def _pause(self, exc: OSError) -> None:
        """Stop accepting for :data:`ACCEPT_PAUSE` seconds: the connection stays
        queued, and a listening socket that stays readable must not spin the loop."""
        self._accept_log.warning(
            "unix control socket: accept failed (%s), trying again in %.1f s",
            exc.strerror or exc,
            ACCEPT_PAUSE,
        )
        self._loop.remove_reader(self._fd)
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        self._loop.add_reader(self._fd, self._accept)

    def _read(self, conn: RawSocket) -> None:
        try:
            data = conn.recv(MAX_COMMAND, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self._wait(conn, None)
            return
        except OSError:
            conn.close()
            return
        if not data:  # closed without a command: nothing to answer
            conn.close()
            return
        self._send(conn, self._processor.handle(data, LOCAL_CONTEXT))

    def _send(self, conn: RawSocket, reply: bytes) -> None:
        try:
            sent = conn.send(reply, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client is gone
            conn.close()
            return
        if sent < len(reply):
            self._wait(conn, reply[sent:])
        else:
            conn.close()

    def _wait(self, conn: RawSocket, rest: bytes | None) -> None:
        if len(self._waiting) >= self._limit:
            conn.close()
            if self._on_refused is not None:
                self._on_refused()
            return
        fd = conn.fileno()
        timer = self._loop.call_later(self._idle, self._expire, fd)
        self._waiting[fd] = (conn, timer, rest)
        if rest is None:
            self._loop.add_reader(fd, self._readable, fd)
        else:
            self._loop.add_writer(fd, self._writable, fd)

    def _forget(self, fd: int) -> tuple[RawSocket, bytes | None]:
        """Stop waiting on ``fd``: its connection and what was left to send."""
        conn, timer, rest = self._waiting.pop(fd)
        timer.cancel()
        if rest is None:
            self._loop.remove_reader(fd)
        else:
            self._loop.remove_writer(fd)
        return conn, rest

    def _readable(self, fd: int) -> None:
        self._read(self._forget(fd)[0])

    def _writable(self, fd: int) -> None:
        conn, rest = self._forget(fd)
        assert rest is not None
        self._send(conn, rest)

    def _expire(self, fd: int) -> None:  # (forgetting cancels the timer: fd still waits)
        self._forget(fd)[0].close()


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


def _enlarge_receive_buffer(name: str, sock: socket.socket) -> None:
    """Give a UDP control socket :data:`CONTROL_RECEIVE_BUFFER`; beyond
    net.core.rmem_max only with CAP_NET_ADMIN (which a relay has before ``-u``)."""
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, CONTROL_RECEIVE_BUFFER)
            return
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CONTROL_RECEIVE_BUFFER)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux doubles it
    except OSError as exc:  # the default buffer still serves; a burst may overflow it
        log.warning("%s: cannot enlarge the receive buffer: %s", name, exc)
        return
    if granted < CONTROL_RECEIVE_BUFFER:
        log.info(
            "%s: receive buffer %d bytes (net.core.rmem_max), not %d: a burst of "
            "commands beyond it is dropped",
            name,
            granted,
            CONTROL_RECEIVE_BUFFER,
        )


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
            if kind is ControlKind.UNIX:
                listener = OneShotListener(sock, self._processor, loop, on_refused=self._refuse)
                self._closers.append(listener.close)
                self._listening.append((name, listener.fileno))
            else:
                self._serving(name, await loop.create_unix_server(self._line_protocol, sock=sock))
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
            if passed:  # the predecessor's socket, buffer and all
                await self._serve_datagrams(name, sock=passed[0])
            else:
                bound = await self._serve_datagrams(
                    name, local_addr=(spec.bind_host, spec.port), family=family_of(spec.bind_host)
                )
                _enlarge_receive_buffer(name, bound)
        elif kind in (ControlKind.STDIO, ControlKind.STDIOC):
            await self._open_stdio()
        elif kind is ControlKind.SYSTEMD:
            await self._open_systemd(passed)

    async def _serve_datagrams(
        self,
        name: str,
        sock: socket.socket | None = None,
        local_addr: tuple[str, int] | None = None,
        family: int = 0,
    ) -> socket.socket:
        """Speak the cookie protocol on ``sock``, or on a new socket bound to
        ``local_addr``; returns the socket."""
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: DatagramProtocol(self._processor),
            sock=sock,
            local_addr=local_addr,
            family=family,
        )
        bound: socket.socket = transport.get_extra_info("socket")
        self._closers.append(transport.close)
        self._listening.append((name, bound.fileno))
        return bound

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
            if sock.type == socket.SOCK_DGRAM and inet:  # its buffer: the unit's ReceiveBuffer=
                await self._serve_datagrams(name, sock=sock)
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
