"""The data plane: one non-blocking UDP socket per stream, read by the event loop.

The per-packet path is deliberately short: when a stream is settled (latched, complete,
nothing tapping the media) the engine arms ``fast_src``/``fast_dest`` and a packet from
``fast_src`` costs one comparison, one counter and one ``sendto``. Everything else (first
packets, latching, a stranger's packets, the once-a-second sample the sweeper forces)
goes through :meth:`pyrtpproxy.engine.session.Stream.receive`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..engine.session import Leg, LocalAddress, Stream

log = logging.getLogger("pyrtpproxy.media")

RECEIVE_BUFFER = 256 * 1024
MAX_DATAGRAM = 65536
SMALL_PACKET = 128
_BIND_BUSY = (errno.EADDRINUSE, errno.EACCES)

LatchListener = Callable[[Stream, str], None]


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Socket options of media sockets."""

    tos: int = 0xB8
    send_small_twice: bool = False


class MediaRelay:
    """Implements the engine's ``MediaOps`` on an asyncio (uvloop) event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: MediaConfig,
        on_latch: LatchListener | None = None,
    ) -> None:
        self._loop = loop
        self._config = config
        self._on_latch = on_latch
        self.send_errors = 0

    # --- MediaOps --------------------------------------------------------------------

    def open_leg(self, leg: Leg, local: LocalAddress, port: int) -> bool:
        """Bind RTP on ``port`` and RTCP on ``port + 1`` and start reading them."""
        sockets: list[socket.socket] = []
        try:
            for number in (port, port + 1):
                sockets.append(self._bind(local, number))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            if exc.errno in _BIND_BUSY:
                return False
            raise
        self.close_leg(leg)
        for sock, stream in zip(sockets, leg.streams, strict=True):
            stream.transport = sock
            self._loop.add_reader(sock.fileno(), self._reader(stream, sock))
        return True

    def close_leg(self, leg: Leg) -> None:
        """Stop reading and close the leg's sockets."""
        for stream in leg.streams:
            sock = stream.transport
            if isinstance(sock, socket.socket):
                self._loop.remove_reader(sock.fileno())
                sock.close()
            stream.transport = None
            stream.fast_src = None

    def source_address_for(self, remote: str, ipv6: bool) -> str | None:
        """Ask the routing table which local address reaches ``remote``."""
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((remote, 9))
            except OSError:
                return None
            host: str = probe.getsockname()[0]
            return host

    def is_local_address(self, host: str, ipv6: bool) -> bool:
        """True if a media socket can bind to ``host``."""
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((host, 0))
            except OSError:
                return False
            return True

    # --- sockets ---------------------------------------------------------------------

    def _bind(self, local: LocalAddress, port: int) -> socket.socket:
        family = socket.AF_INET6 if local.ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            if local.ipv6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, self._config.tos)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, self._config.tos)
            sock.bind((local.host or ("::" if local.ipv6 else "0.0.0.0"), port))
        except OSError:
            sock.close()
            raise
        return sock

    def _reader(self, stream: Stream, sock: socket.socket) -> Callable[[], None]:
        recvfrom = sock.recvfrom
        slow = self._slow_path
        twice = self._config.send_small_twice
        clock = self._loop.time
        analysis = stream.analysis

        def on_readable() -> None:
            try:
                data, src = recvfrom(MAX_DATAGRAM)
            except OSError:
                return  # EAGAIN, or an ICMP error reported on the socket: nothing to relay
            if src == stream.fast_src and not twice:
                stream.fast_count += 1
                if analysis is not None:
                    analysis.feed(data, clock())
                try:
                    stream.peer.transport.sendto(data, stream.fast_dest)  # type: ignore[attr-defined]
                except OSError:
                    self.send_errors += 1
                return
            slow(stream, data, src)

        return on_readable

    def _slow_path(self, stream: Stream, data: bytes, src: tuple[str, int]) -> None:
        before = (stream.remote, stream.relatch_count)
        dest = stream.receive(data, src, self._loop.time())
        if self._on_latch is not None and (stream.remote, stream.relatch_count) != before:
            self._on_latch(stream, "re-latched" if stream.relatch_count != before[1] else "latched")
        if dest is None:
            return
        out = stream.peer.transport
        if not isinstance(out, socket.socket):
            return
        try:
            out.sendto(data, dest)
            if self._config.send_small_twice and len(data) < SMALL_PACKET:
                out.sendto(data, dest)
        except OSError:
            self.send_errors += 1
