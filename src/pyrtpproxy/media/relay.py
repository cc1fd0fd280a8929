"""The data plane: UDP sockets per stream, read by the event loop.

Each stream (a leg's RTP or RTCP port) has an unconnected socket that hears everybody,
and, once its remote address is known, a second socket on the same port (``SO_REUSEPORT``)
*connected* to that remote. The kernel hands the connected socket exactly the remote's
packets, so the settled case needs no address handling at all: ``recv``, count, ``send``
out of the opposite stream's connected socket. Strangers, first packets, re-latching and
the once-a-second sample land on the unconnected socket or take the slow path through
:meth:`pyrtpproxy.engine.session.Stream.receive`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..engine.addresses import Endpoint, LocalAddress
from ..engine.session import DETACHED, Leg, Stream
from ..net import family_of, probe_bind
from .kernel import KernelForwarder

RECEIVE_BUFFER = 256 * 1024
MAX_DATAGRAM = 65536
SMALL_PACKET = 128
DISPATCH_BATCH = 256  # ready sockets served per event-loop wakeup
LOCAL_HOST_CACHE = 4096  # remembered answers to "is this address one of ours?"
_BIND_BUSY = (errno.EADDRINUSE, errno.EACCES)

LatchListener = Callable[[Stream, str], None]


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Socket options of media sockets."""

    tos: int = 0xB8
    send_small_twice: bool = False


def _media_socket(local: LocalAddress, port: int, tos: int) -> socket.socket:
    sock = socket.socket(family_of(local.bind_host), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        if local.ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
        sock.bind((local.bind_host, port))
    except OSError:
        sock.close()
        raise
    return sock


class StreamSocket:
    """The sockets of one stream; the engine sees it as ``Stream.transport``."""

    __slots__ = (
        "connected",
        "connected_to",
        "forward",
        "local",
        "port",
        "relay",
        "send",
        "sock",
        "stream",
    )

    def __init__(
        self, relay: MediaRelay, stream: Stream, sock: socket.socket, local: LocalAddress, port: int
    ) -> None:
        self.relay = relay
        self.stream = stream
        self.sock = sock
        self.local = local
        self.port = port
        self.connected: socket.socket | None = None
        self.connected_to: Endpoint | None = None
        # send(data) delivers to stream.remote; the opposite stream's fast path calls it
        self.send: Callable[[bytes], object] = self._send_nowhere
        self.forward = relay.forwarder(stream)

    def _send_nowhere(self, data: bytes) -> None:
        return None

    def remote_changed(self, remote: Endpoint | None) -> None:
        """Keep the connected socket aimed at the stream's remote address."""
        if remote == self.connected_to and self.connected is not None:
            return
        self.relay.take_back(self.stream)
        if remote is None or remote.port == 0:
            self._drop_connected()
            self.send = self._send_nowhere
            return
        target = (remote.host, remote.port)
        try:
            if self.connected is None:
                self.connected = _media_socket(self.local, self.port, self.relay.config.tos)
                self.relay.watch(self.connected, self.relay.connected_reader(self))
            self.connected.connect(target)
        except OSError:
            self._drop_connected()
            self.send = lambda data: self.sock.sendto(data, target)
            return
        self.connected_to = remote
        self.send = self.connected.send

    def _drop_connected(self) -> None:
        if self.connected is not None:
            self.relay.unwatch(self.connected)
            self.connected = None
        self.connected_to = None

    def close(self) -> None:
        """Stop reading and close both sockets."""
        self._drop_connected()
        self.relay.unwatch(self.sock)
        self.send = self._send_nowhere


class MediaRelay:
    """Implements the engine's ``MediaOps`` on an asyncio (uvloop) event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: MediaConfig,
        on_latch: LatchListener | None = None,
        kernel: KernelForwarder | None = None,
    ) -> None:
        self.loop = loop
        self.config = config
        self._on_latch = on_latch
        self.kernel = kernel
        self._local_hosts: dict[str, bool] = {}
        self.send_errors = 0
        self.now = loop.time()
        # One epoll set for every media socket, read by a single event-loop callback:
        # libuv stops a poll handle whose fd reports POLLERR (an ICMP error on a connected
        # UDP socket), and dispatching ourselves serves every ready socket per wakeup.
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def _dispatch(self) -> None:
        # One clock read per wakeup: the arrival time of every packet served in it.
        self.now = self.loop.time()
        readers = self._readers
        for fd, _events in self._epoll.poll(0, DISPATCH_BATCH):
            reader = readers.get(fd)
            if reader is not None:
                reader()

    def close(self) -> None:
        """Stop dispatching media (sockets are closed with their legs)."""
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        if self.kernel is not None:
            self.kernel.stop()

    # --- MediaOps --------------------------------------------------------------------

    def open_leg(self, leg: Leg, local: LocalAddress, port: int) -> bool:
        """Bind RTP on ``port`` and RTCP on ``port + 1`` and start reading them."""
        sockets: list[socket.socket] = []
        try:
            for number in (port, port + 1):
                sockets.append(self._exclusive_socket(local, number))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            if exc.errno in _BIND_BUSY:
                return False
            raise
        self.close_leg(leg)
        for sock, stream, number in zip(sockets, leg.streams, (port, port + 1), strict=True):
            transport = StreamSocket(self, stream, sock, local, number)
            stream.transport = transport
            self.watch(sock, self._unconnected_reader(transport))
        return True

    def close_leg(self, leg: Leg) -> None:
        """Stop reading and close the leg's sockets."""
        for stream in leg.streams:
            self.take_back(stream)
        if self.kernel is not None:
            self.kernel.flush()  # now: the leg's counters must be final when this returns
        for stream in leg.streams:
            if isinstance(stream.transport, StreamSocket):
                stream.transport.close()
            stream.transport = DETACHED
            stream.fast_src = None
            stream.peer.fast_src = None  # its fast path sends through this stream's socket

    def refresh_counters(self) -> None:
        """Fold the counts of kernel-forwarded packets into the streams."""
        if self.kernel is not None:
            self.kernel.sync()

    def source_address_for(self, remote: str, ipv6: bool) -> str | None:
        """Ask the routing table which local address reaches ``remote``."""
        with socket.socket(family_of(remote), socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((remote, 9))
            except OSError:
                return None
            host: str = probe.getsockname()[0]
            return host

    def is_local_address(self, host: str, ipv6: bool) -> bool:
        """True if a media socket can bind to ``host``."""
        try:
            probe_bind(host)
        except OSError:
            return False
        return True

    # --- in-kernel forwarding -----------------------------------------------------------

    def take_back(self, stream: Stream) -> None:
        """Stop kernel forwarding both directions that depend on ``stream``'s address."""
        if self.kernel is not None:
            self.kernel.withdraw(stream)
            self.kernel.withdraw(stream.peer)

    def _offer_to_kernel(self, stream: Stream) -> None:
        """Hand a settled stream to the kernel when it qualifies (IPv4, symmetric, latched,
        peer address known, nothing tapping the media; for a packet between two other
        hosts, only when the host forwards IPv4)."""
        kernel = self.kernel
        assert kernel is not None
        source, peer = stream.remote, stream.peer
        dest = peer.remote
        inbound, outbound = stream.transport, peer.transport
        if (
            source is None
            or dest is None
            or not stream.latched
            or stream.leg.asymmetric
            or not stream.leg.session.fast_path_allowed
            or self.config.send_small_twice
            or not isinstance(inbound, StreamSocket)
            or not isinstance(outbound, StreamSocket)
            or inbound.local.ipv6
            or outbound.local.ipv6
            or outbound.connected is None
            or outbound.connected_to != dest
            or dest.port == 0
            or ipaddress.ip_address(dest.host).is_unspecified
        ):
            return
        if not (
            kernel.routes_between_hosts
            or self._is_local_host(source.host)
            or self._is_local_host(dest.host)
        ):
            return
        host, port = outbound.connected.getsockname()[:2]
        kernel.offload(stream, source, inbound.port, dest, Endpoint(host, port))

    def _is_local_host(self, host: str) -> bool:
        known = self._local_hosts.get(host)
        if known is None:
            if len(self._local_hosts) >= LOCAL_HOST_CACHE:
                self._local_hosts.clear()  # remote hosts come and go; keep the cache bounded
            known = self._local_hosts[host] = self.is_local_address(host, ipv6=False)
        return known

    # --- sockets and readers ---------------------------------------------------------

    def _exclusive_socket(self, local: LocalAddress, port: int) -> socket.socket:
        """A media socket on a port nobody else holds: SO_REUSEPORT is set (for our own
        connected twin) only after a probe bind without it proved the port free."""
        probe_bind(local.bind_host, port)
        return _media_socket(local, port, self.config.tos)

    def watch(self, sock: socket.socket, reader: Callable[[], None]) -> None:
        """Start calling ``reader`` when ``sock`` is readable (or has an error to read)."""
        fd = sock.fileno()
        self._readers[fd] = reader
        self._epoll.register(fd, select.EPOLLIN)

    def unwatch(self, sock: socket.socket) -> None:
        """Stop reading ``sock`` and close it."""
        fd = sock.fileno()
        if fd >= 0:
            self._readers.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        sock.close()

    def forwarder(self, stream: Stream) -> Callable[[bytes], None]:
        """The settled per-packet path of ``stream``: count, analyse, send on."""
        analysis = stream.analysis
        relay = self

        def forward(data: bytes) -> None:
            stream.fast_count += 1
            stream.fast_bytes += len(data)
            if analysis is not None:
                analysis.feed(data, relay.now)
            try:
                stream.peer.transport.send(data)
            except OSError:
                relay.send_errors += 1

        return forward

    def connected_reader(self, transport: StreamSocket) -> Callable[[], None]:
        """Reader of the connected socket: every packet comes from ``connected_to``."""
        stream = transport.stream
        connected = transport.connected
        assert connected is not None
        recv = connected.recv
        forward = transport.forward
        slow = self._slow_path

        def on_readable() -> None:
            try:
                data = recv(MAX_DATAGRAM)
            except OSError:
                return  # EAGAIN, or an ICMP error for the peer: nothing to relay
            source = transport.connected_to
            if stream.fast_src == source and source is not None:
                forward(data)
                return
            if source is not None:
                slow(stream, data, source)

        return on_readable

    def _unconnected_reader(self, transport: StreamSocket) -> Callable[[], None]:
        stream = transport.stream
        recvfrom = transport.sock.recvfrom
        forward = transport.forward
        slow = self._slow_path

        def on_readable() -> None:
            try:
                data, src = recvfrom(MAX_DATAGRAM)
            except OSError:
                return
            if src == stream.fast_src:  # an asymmetric leg's party sending from another port
                forward(data)
                return
            slow(stream, data, src)

        return on_readable

    def _slow_path(self, stream: Stream, data: bytes, src: tuple[str, int]) -> None:
        if self.kernel is not None and src != stream.remote:
            self.kernel.refresh(stream, self.now)  # re-latching compares sequence numbers
        before = (stream.remote, stream.latched, stream.relatch_count)
        dest = stream.receive(data, src, self.now)
        if (
            self._on_latch is not None
            and (stream.remote, stream.latched, stream.relatch_count) != before
        ):
            self._on_latch(stream, "re-latched" if stream.relatch_count != before[2] else "latched")
        if self.config.send_small_twice:
            stream.fast_src = None  # every packet needs the duplicate check below
        if dest is None:
            return
        if (
            self.kernel is not None
            and stream.fast_src is not None
            and not self.kernel.holds(stream)
        ):
            self._offer_to_kernel(stream)
        out = stream.peer.transport
        try:
            out.send(data)
            if self.config.send_small_twice and len(data) < SMALL_PACKET:
                out.send(data)
        except OSError:
            self.send_errors += 1
