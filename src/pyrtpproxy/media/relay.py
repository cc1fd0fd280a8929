"""The data plane: UDP sockets per stream, read by the event loop.

Each stream (a leg's RTP or RTCP port) has an unconnected socket that hears everybody,
and, once its media is settled (latched, both remotes known), a second socket on the same
port (``SO_REUSEPORT``) *connected* to that remote. Until then the stream sends with
``sendto`` from its one socket, so sessions without media (idle, or set up and torn down
by signalling alone) cost one socket per stream. The kernel hands the connected socket
exactly the remote's packets, so the settled case needs no address handling at all:
``recv``, count, ``send`` out of the opposite stream's connected socket. Strangers, first
packets and re-latching land on the unconnected socket or take the slow path, where the
engine judges them (:meth:`pyrtpproxy.engine.engine.Engine.receive`).

The engine never calls in here except through the host probe (:meth:`MediaRelay.try_bind`
and two address questions); everything else arrives as events, applied by
:meth:`MediaRelay.apply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..engine.addresses import Endpoint, LocalAddress
from ..engine.counters import Counters
from ..engine.engine import Forwarding
from ..engine.events import (
    Event,
    LegClosed,
    LegOpened,
    PlayerCreated,
    PortsReleased,
    ResizerChanged,
    StreamChanged,
    TapStarted,
    TapStopped,
    TosChanged,
)
from ..engine.ports import PortsExhausted
from ..engine.session import DETACHED, Leg, Stream
from ..engine.taps import Tap, UdpCopy
from ..names import system_resolver
from ..net import MediaSocket, family_of, probe_bind
from .kernel import KernelForwarder
from .prompts import PromptFiles
from .record import RecordDirs
from .taps import CopyTap, TapOpener, TapSink

RECEIVE_BUFFER = 256 * 1024
MAX_DATAGRAM = 65536
SMALL_PACKET = 128
DISPATCH_BATCH = 256  # ready sockets served per event-loop wakeup
LOCAL_HOST_CACHE = 4096  # remembered answers to "is this address one of ours?"
_BIND_BUSY = (errno.EADDRINUSE, errno.EACCES)
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)  # the open-file limit (-L) or the system's
FD_WARNING_INTERVAL = 10.0  # seconds between two warnings about the open-file limit
# Descriptors media never takes, so that control connections, notifications and
# recording files still open when the open-file limit (-L) is the bottleneck.
RESERVED_FDS = 16
SOCKETS_PER_LEG = 4  # RTP and RTCP, each with its connected twin
SPARE_SOCKETS = 4  # unbound media sockets kept ready per address family: two legs' worth
_NONBLOCKING_DATAGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK  # one system call less

log = logging.getLogger("pyrtpproxy.media")

_T = TypeVar("_T")

SlowPath = Callable[[Stream, bytes, tuple[str, int], float], Forwarding]
EventSink = Callable[[tuple[Event, ...]], None]


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Socket options of media sockets."""

    tos: int = 0xB8
    send_small_twice: bool = False


def _unbound_socket(family: int, ipv6: bool, tos: int, twin: bool = False) -> MediaSocket:
    """A media socket with its options set, not bound yet."""
    sock = MediaSocket(family, _NONBLOCKING_DATAGRAM)
    try:
        if twin:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        if ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    except OSError:
        sock.close()
        raise
    return sock


def _media_socket(local: LocalAddress, port: int, tos: int, twin: bool = False) -> MediaSocket:
    """A media socket bound to ``local``:``port``. The first socket of a port binds
    without ``SO_REUSEPORT``, so the bind itself proves nobody else holds the port; a
    connected ``twin`` shares the port with it."""
    sock = _unbound_socket(family_of(local.bind_host), local.ipv6, tos, twin)
    try:
        sock.bind((local.bind_host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _remember(cache: dict[str, _T], key: str, compute: Callable[[], _T]) -> _T:
    """``cache[key]``, computed on a miss; remote hosts come and go, so the cache is
    emptied when it reaches :data:`LOCAL_HOST_CACHE` entries."""
    if key in cache:
        return cache[key]
    if len(cache) >= LOCAL_HOST_CACHE:
        cache.clear()
    value = cache[key] = compute()
    return value


def _send_nowhere(data: bytes) -> None:
    """The sender of a stream without a remote address (one function for every stream,
    not a bound method each)."""
    return None


def _never_forwarded(data: bytes) -> None:
    return None


def _no_slow_path(stream: Stream, data: bytes, src: tuple[str, int], now: float) -> Forwarding:
    return Forwarding(None, False, (), False)


def _ignore_events(events: tuple[Event, ...]) -> None:
    return None


class StreamSocket:
    """The sockets of one stream; the engine sees it as ``Stream.transport``.

    ``fast_src`` is the shortcut: packets from that source skip the slow path. It is set
    only when the engine says the stream is settled for that source, and cleared only by
    :meth:`unsettle`.
    """

    __slots__ = (
        "connected",
        "connected_to",
        "fast_src",
        "forward",
        "local",
        "port",
        "relay",
        "send",
        "sock",
        "stream",
        "target",
        "tos",
    )

    def __init__(
        self, relay: MediaRelay, stream: Stream, sock: MediaSocket, local: LocalAddress, port: int
    ) -> None:
        self.relay = relay
        self.stream = stream
        self.sock = sock
        self.local = local
        self.port = port
        self.connected: MediaSocket | None = None
        self.connected_to: Endpoint | None = None
        self.target: Endpoint | None = None  # where send() delivers
        self.fast_src: object = None
        self.tos = relay.config.tos
        # send(data) delivers to stream.remote; the opposite stream's fast path calls it
        self.send: Callable[[bytes], object] = _send_nowhere
        # made with the twin: only settled streams take the fast path
        self.forward: Callable[[bytes], None] = _never_forwarded

    def unsettle(self) -> None:
        """Send the next packet of this stream through the slow path."""
        self.fast_src = None

    def set_tos(self, tos: int) -> None:
        """IPv4 TOS of this stream's sockets."""
        self.tos = tos
        for sock in (self.sock, self.connected):
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)

    def aim(self, remote: Endpoint | None) -> None:
        """Send to the stream's remote address from now on (through the connected twin,
        if the stream has one; from the unconnected socket otherwise)."""
        if remote is None or remote.port == 0:
            self._drop_connected()
            self.target = None
            self.send = _send_nowhere
            return
        self.target = remote
        if self.connected is None:
            self.send = self._send_unconnected
        elif remote != self.connected_to:
            self._connect_twin(remote)

    def twin(self) -> None:
        """Give the stream its connected twin (once media is settled: idle and
        signalling-only sessions keep one socket per stream)."""
        if self.forward is _never_forwarded:
            self.forward = self.relay.forwarder(self.stream)
        if self.connected is None and self.target is not None:
            self._connect_twin(self.target)

    def _connect_twin(self, remote: Endpoint) -> None:
        try:
            if self.connected is None:
                # The port was ours alone since its bind; only now may a twin share it.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                self.connected = _media_socket(self.local, self.port, self.tos, twin=True)
                self.relay.watch(self.connected, self.relay.connected_reader(self))
            self.connected.connect((remote.host, remote.port))
        except OSError:
            self._drop_connected()
            self.send = self._send_unconnected
            return
        self.connected_to = remote
        self.send = self.connected.send

    def _send_unconnected(self, data: bytes) -> None:
        target = self.target
        if target is not None:  # an Endpoint is the (host, port) tuple sendto wants
            self.sock.sendto(data, target)

    def read(self) -> None:
        """Reader of the unconnected socket: first packets, strangers, re-latching, and an
        asymmetric leg's party sending from a port we do not send to."""
        try:
            data, src = self.sock.recvfrom(MAX_DATAGRAM)
        except OSError:
            return
        if src == self.fast_src:
            self.forward(data)
            return
        self.relay.take_slow_path(self, data, src)

    __call__ = read  # the epoll dispatcher calls readers; no bound method per socket

    def adopt_connected(self, connected: MediaSocket) -> None:
        """Serve a connected twin a previous relay made (a hand-over): what the kernel
        queued on it is read, not lost."""
        host, port = connected.getpeername()[:2]
        if self.forward is _never_forwarded:
            self.forward = self.relay.forwarder(self.stream)
        self.connected = connected
        self.connected_to = Endpoint(host, port)
        self.relay.watch(connected, self.relay.connected_reader(self))
        self.send = connected.send

    def _drop_connected(self) -> None:
        if self.connected is not None:
            self.relay.unwatch(self.connected)
            self.connected = None
        self.connected_to = None

    def close(self) -> None:
        """Stop reading and close both sockets."""
        self.unsettle()
        self._drop_connected()
        self.relay.unwatch(self.sock)
        self.send = _send_nowhere  # (a bound method here would keep a closed stream alive)


class MediaRelay:
    """Serves media sockets on an asyncio (uvloop) event loop.

    ``slow_path`` judges a packet the fast path cannot (the engine's ``receive``);
    ``on_events`` takes the events it returns (the app's dispatcher, which hands the
    media ones back to :meth:`apply`).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: MediaConfig,
        counters: Counters | None = None,
        kernel: KernelForwarder | None = None,
        slow_path: SlowPath = _no_slow_path,
        on_events: EventSink = _ignore_events,
        record_dirs: RecordDirs | None = None,
    ) -> None:
        self.loop = loop
        self.config = config
        self.counters = counters or Counters()
        self.kernel = kernel
        self._judge = slow_path
        self._on_events = on_events
        self._local_hosts: dict[str, bool] = {}
        self._route_sources: dict[str, str | None] = {}  # remote host -> our address to it
        self._bound: dict[tuple[LocalAddress, int], tuple[MediaSocket, MediaSocket]] = {}
        self._opener = TapOpener(record_dirs, self._tap_failed)
        self._pending_taps: dict[Leg, TapSink] = {}
        self.taps: dict[Leg, TapSink] = {}
        self._failed_calls: set[bytes] = set()  # calls whose recording failure was logged
        self._resuming = False  # restoring sessions: recordings continue their files
        # sockets a previous relay handed over, by port, until a restored leg takes them
        self._adopted: dict[int, MediaSocket] = {}
        self._adopted_connected: dict[int, MediaSocket] = {}
        self._prompts = PromptFiles()
        self._wall_offset = time.time() - loop.time()  # record times are wall clock
        self.now = loop.time()
        self._fd_warned_at = float("-inf")
        self._fd_budget: float | None = None  # media sockets allowed; set at the first bind
        # One epoll set for every media socket, read by a single event-loop callback:
        # libuv stops a poll handle whose fd reports POLLERR (an ICMP error on a connected
        # UDP socket), and dispatching ourselves serves every ready socket per wakeup.
        self._epoll = select.epoll()
        # Indexed by fd (small, dense numbers): a list slot costs 8 bytes where a dict
        # entry and its int key cost about 70, for each of an idle session's 4 sockets.
        self._readers: list[Callable[[], None] | None] = []
        self._watched = 0
        # Closing a socket takes it out of the epoll set, unless another process holds
        # the same socket: then it must be unregistered first, or the set keeps reporting
        # it under an fd number a new socket may get. Such are the sockets a previous
        # relay handed over (it holds them until it exits) and, once this relay has
        # handed its sockets over, all of them.
        self._shared_fds: set[int] = set()
        self._all_shared = False
        # Sockets to add to the epoll set, and to close, once the command at hand is
        # answered: the proxy's worker waits for the reply, not for these. A socket to
        # close keeps its fd until then, so no socket to watch can share its number.
        self._to_watch: list[MediaSocket] = []
        self._to_close: list[MediaSocket] = []
        self._after_reply_due = False  # run_after_reply is scheduled
        # Made (with their options) after a reply, bound by the next U/L: per family,
        # what the legs of the address families in use take, SPARE_SOCKETS at most.
        self._spares: dict[tuple[int, bool], list[MediaSocket]] = {}
        loop.add_reader(self._epoll.fileno(), self._dispatch)
        self._handlers = self.handlers()

    def connect_engine(self, slow_path: SlowPath, on_events: EventSink) -> None:
        """Wire the slow path and the event sink (the engine is built after the relay,
        because the relay is its host probe)."""
        self._judge = slow_path
        self._on_events = on_events

    def _dispatch(self) -> None:
        # One clock read per wakeup: the arrival time of every packet served in it.
        self.now = self.loop.time()
        readers = self._readers
        for fd, _events in self._epoll.poll(0, DISPATCH_BATCH):
            reader = readers[fd]  # registered, so within the list
            if reader is not None:  # None: closed by an earlier reader of this batch
                reader()

    @contextlib.contextmanager
    def resuming(self) -> Iterator[None]:
        """While sessions are restored: recordings are reopened to be appended to."""
        self._resuming = True
        try:
            yield
        finally:
            self._resuming = False

    # --- hand-over (handover.py) ---------------------------------------------------------

    def suspend(self) -> None:
        """Stop reading media; the kernel queues the packets on the sockets meanwhile.
        Recordings are written out for the successor to append to."""
        self.loop.remove_reader(self._epoll.fileno())
        self.flush_taps()

    def resume(self) -> None:
        """Read media again (a hand-over that failed)."""
        self.loop.add_reader(self._epoll.fileno(), self._dispatch)

    def handover_sockets(self) -> list[int]:
        """The descriptors of every media socket, for a successor: each stream's
        unconnected and connected ones, and the port pairs copies send from."""
        self._all_shared = True
        fds = [fd for fd, reader in enumerate(self._readers) if reader is not None]
        for sink in self.taps.values():
            if isinstance(sink, CopyTap):
                fds.extend(sock.fileno() for sock in sink.sockets())
        return fds

    def adopt(self, sockets: list[socket.socket]) -> None:
        """Sockets a previous relay handed over: :meth:`try_bind` takes them for their
        port instead of binding, a restored stream takes its connected twin."""
        for sock in sockets:
            self._shared_fds.add(sock.fileno())
            port = sock.getsockname()[1]
            try:
                sock.getpeername()
            except OSError:
                self._adopted[port] = sock
            else:
                self._adopted_connected[port] = sock

    def drop_unadopted(self) -> int:
        """Close the handed-over sockets no restored session took; how many."""
        left = [*self._adopted.values(), *self._adopted_connected.values()]
        for sock in left:
            self._shared_fds.discard(sock.fileno())
            sock.close()
        self._adopted.clear()
        self._adopted_connected.clear()
        return len(left)

    def _take_adopted(self, local: LocalAddress, port: int) -> bool:
        rtp, rtcp = self._adopted.get(port), self._adopted.get(port + 1)
        if rtp is None or rtcp is None:
            return False
        if any(sock.getsockname()[0] != local.bind_host for sock in (rtp, rtcp)):
            return False  # another address now: bind anew
        del self._adopted[port], self._adopted[port + 1]
        self._bound[(local, port)] = (rtp, rtcp)
        return True

    def close(self, finish_taps: bool = True, delete_kernel_table: bool = True) -> None:
        """Stop dispatching media (sockets are closed with their legs). Without
        ``finish_taps`` (the sessions live on in the journal) recordings are written out
        and left where they are, for the next process to append to; without
        ``delete_kernel_table`` (a successor runs) the kernel path is left alone."""
        self._run_pending()
        self._close_spares()
        self._spares.clear()  # a run_after_reply still due makes none
        for sink in (*self.taps.values(), *self._pending_taps.values()):
            if finish_taps:
                sink.close()
            else:
                sink.flush()
        self.taps.clear()
        self._pending_taps.clear()
        if finish_taps:
            self._opener.close_all()
        for local, port in list(self._bound):
            self._close_bound(local, port)
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        if self.kernel is not None and delete_kernel_table:
            self.kernel.stop()

    # --- the host probe (engine.ports.HostProbe) -----------------------------------------

    def try_bind(self, local: LocalAddress, port: int) -> bool:
        """Bind RTP on ``port`` and RTCP on ``port + 1``; kept until ``LegOpened``.
        Out of file descriptors, no port can be bound: raises ``PortsExhausted``."""
        if self._adopted and self._take_adopted(local, port):
            return True
        if self._media_sockets() + SOCKETS_PER_LEG > self._media_fd_budget():
            self._run_pending()  # closed legs' descriptors first
            self._close_spares()  # and spare sockets give theirs up near the limit
            if self._media_sockets() + SOCKETS_PER_LEG > self._media_fd_budget():
                self._warn_no_descriptors("the open-file limit is reached")
                raise PortsExhausted
        if self._bind_pair(local, port):
            return True
        if not self._to_close:
            return False
        self._run_pending()  # the port may be a closed leg's, not let go yet
        return self._bind_pair(local, port)

    def _bind_pair(self, local: LocalAddress, port: int) -> bool:
        """Bind RTP and RTCP on ``port`` (spare sockets first); False if either is taken."""
        host = local.bind_host
        kind = (family_of(host), local.ipv6)
        spares = self._spares.get(kind)
        if spares is None:
            spares = self._spares[kind] = []
        sockets: list[MediaSocket] = []
        sock: MediaSocket | None = None
        try:
            for number in (port, port + 1):
                if spares:
                    sock = spares.pop()
                else:
                    sock = _unbound_socket(kind[0], local.ipv6, self.config.tos)
                sock.bind((host, number))
                sockets.append(sock)
        except OSError as exc:
            for bound in sockets:
                bound.close()
            if sock is not None and sock not in sockets:
                if exc.errno in _BIND_BUSY:  # not bound: still a spare
                    spares.append(sock)
                else:
                    sock.close()
            if exc.errno in _BIND_BUSY:
                return False
            if exc.errno in _NO_DESCRIPTORS:  # no other port would do better: E71/E72
                self._warn_no_descriptors(exc.strerror or "no file descriptors")
                raise PortsExhausted from exc
            raise
        finally:
            if len(spares) < SPARE_SOCKETS:
                self._schedule_after_reply()
        self._bound[(local, port)] = (sockets[0], sockets[1])
        return True

    def _refill_spares(self) -> None:
        """Make the spare sockets the last U/Ls took, while the open-file limit has room
        for them and a leg besides."""
        room = self._media_fd_budget() - self._media_sockets() - SOCKETS_PER_LEG
        tos = self.config.tos
        for (family, ipv6), spares in self._spares.items():
            while len(spares) < SPARE_SOCKETS and room >= 1:
                try:
                    spares.append(_unbound_socket(family, ipv6, tos))
                except OSError:
                    return  # the next bind makes its own, and says why it could not
                room -= 1

    def _close_spares(self) -> None:
        for spares in self._spares.values():
            for sock in spares:
                sock.close()
            spares.clear()

    @property
    def _spare_count(self) -> int:
        return sum(map(len, self._spares.values()))

    def _media_sockets(self) -> int:
        return self._watched + 2 * len(self._bound) + len(self._to_close) + self._spare_count

    def _media_fd_budget(self) -> float:
        """How many sockets media may hold: the open-file limit less what was open at the
        first bind (control sockets, logs...) and :data:`RESERVED_FDS`."""
        if self._fd_budget is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            try:
                open_now = len(os.listdir("/proc/self/fd"))
            except OSError:
                open_now = 0
            unlimited = soft == resource.RLIM_INFINITY
            self._fd_budget = (
                float("inf")
                if unlimited
                else soft - open_now - RESERVED_FDS + self._media_sockets()
            )
        return self._fd_budget

    def _warn_no_descriptors(self, why: str) -> None:
        now = self.loop.time()
        if now - self._fd_warned_at >= FD_WARNING_INTERVAL:
            self._fd_warned_at = now
            log.warning(
                "cannot open media sockets (%s): new legs get E71/E72; raise the open-file "
                "limit (-L) or lower the load",
                why,
            )

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

    def resolve_ipv4(self, host: str) -> str | None:
        """The IPv4 address of ``host`` (a ``C udp:`` target; a name is looked up now,
        once, like rtpproxy does)."""
        try:
            return system_resolver(host, False)
        except (OSError, UnicodeError):
            return None

    def open_tap(self, leg: Leg, tap: Tap) -> bool:
        """Open the files of a recording, or take the copy's bound port pair."""
        sink: TapSink | None
        if isinstance(tap, UdpCopy):
            pair = self._bound.pop((tap.local, tap.port), None)
            sink = None if pair is None else CopyTap(tap, *pair, self.counters.relay)
        else:
            sink = self._opener.open_recording(leg, tap, self._local_of, append=self._resuming)
        if sink is None:
            return False
        self._pending_taps[leg] = sink
        return True

    def read_prompt(self, path: bytes) -> bytes | None:
        """A prompt file's bytes (media/prompts.py: read whole, shared by players)."""
        return self._prompts.read(path)

    def _local_of(self, stream: Stream, remote: tuple[str, int]) -> tuple[str, int]:
        """The relay's address and port of ``stream``, as a recording shows it: a
        wildcard bind shows the address the host would use towards ``remote``."""
        transport = stream.transport
        if not isinstance(transport, StreamSocket):
            return ("0.0.0.0", 0)
        host = transport.local.host
        if not host:  # one routing lookup per remote host, not one per recorded packet
            ipv6 = transport.local.ipv6
            host = _remember(
                self._route_sources, remote[0], lambda: self.source_address_for(remote[0], ipv6)
            ) or ("::" if ipv6 else "0.0.0.0")
        return (host, transport.port)

    def _tap_failed(self, leg: Leg, exc: OSError) -> None:
        """A recording file could not be written: it stops; counted, logged once a call."""
        self.counters.relay.recording_errors += 1
        call_id = leg.session.call_id
        if call_id in self._failed_calls:
            return
        if len(self._failed_calls) >= LOCAL_HOST_CACHE:
            self._failed_calls.clear()
        self._failed_calls.add(call_id)
        log.error(
            "recording of call-id=%r stopped: %s",
            call_id.decode("latin-1"),
            exc.strerror or exc,
        )

    def flush_taps(self) -> None:
        """Write out what the recordings buffered (the app calls this once a second)."""
        for sink in self.taps.values():
            sink.flush()

    # --- engine events -------------------------------------------------------------------

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        """The engine events the media layer carries out, each with its handler (the
        app's dispatch table takes these as they are)."""
        return {
            StreamChanged: self.on_stream_changed,
            LegOpened: self.on_leg_opened,
            LegClosed: self.on_leg_closed,
            PortsReleased: self.on_ports_released,
            TapStarted: self.on_tap_started,
            TapStopped: self.on_tap_stopped,
            ResizerChanged: self.on_resizer_changed,
            TosChanged: self.on_tos_changed,
            PlayerCreated: self.on_player_created,
        }

    def apply(self, event: Event) -> None:
        """Carry out one media event of the engine's (others are not ours: ignored)."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def on_tos_changed(self, event: TosChanged) -> None:
        """Set the IPv4 TOS of the leg's sockets (and of connected twins made later)."""
        for stream in event.leg.streams:
            transport = stream.transport
            if isinstance(transport, StreamSocket):
                transport.set_tos(event.tos)

    def on_tap_started(self, event: TapStarted) -> None:
        """Feed the leg's packets to the tap the probe opened."""
        sink = self._pending_taps.pop(event.leg, None)
        if sink is not None:
            self.taps[event.leg] = sink
        self._unsettle_leg(event.leg)

    def on_tap_stopped(self, event: TapStopped) -> None:
        """Close the leg's tap (files move out of the spool)."""
        sink = self.taps.pop(event.leg, None) or self._pending_taps.pop(event.leg, None)
        if sink is not None:
            sink.close()
        self._unsettle_leg(event.leg)

    def on_player_created(self, event: PlayerCreated) -> None:
        """A prompt mutes the other party's RTP towards its listener: that stream's
        packets come back to the slow path (and out of the kernel), where they are
        dropped until the prompt ends, then settle anew."""
        self._unsettle(event.player.leg.rtp.peer)

    def send_played(self, stream: Stream, packet: bytes) -> None:
        """Send a prompt packet out of ``stream``'s socket to its party."""
        try:
            stream.transport.send(packet)
        except OSError:
            self.counters.relay.send_errors += 1

    def on_resizer_changed(self, event: ResizerChanged) -> None:
        """A re-packetizer started (or changed, or stopped) on the leg: log it; while
        one runs, the leg's packets must take the slow path, where the engine has it."""
        leg = event.leg
        call_id = leg.session.call_id.decode("latin-1")
        if event.target_ms is None:
            log.info("call-id=%r leg %s: RTP no longer re-packetized", call_id, leg.side.name)
            return
        log.info(
            "call-id=%r leg %s: RTP re-packetized to %d ms",
            call_id,
            leg.side.name,
            event.target_ms,
        )
        self._unsettle_leg(leg)

    def _unsettle_leg(self, leg: Leg) -> None:
        """Send the leg's own packets through the slow path again (and out of the
        kernel), where a tap sees them or, once it is gone, they settle anew. The
        other direction does not depend on the tap and keeps its shortcuts."""
        for stream in leg.streams:
            self._unsettle(stream)

    def _unsettle(self, stream: Stream) -> None:
        """The next packet of ``stream`` takes the slow path (and leaves the kernel)."""
        if self.kernel is not None:
            self.kernel.withdraw(stream)
        transport = stream.transport
        if isinstance(transport, StreamSocket):
            transport.unsettle()

    def on_ports_released(self, event: PortsReleased) -> None:
        """Close a port pair the probe bound for nothing."""
        self._close_bound(event.local, event.port)

    def _close_bound(self, local: LocalAddress, port: int) -> None:
        """Close the pair the probe bound on ``local``:``port``, if no leg took it."""
        pair = self._bound.pop((local, port), None)
        if pair is not None:
            for sock in pair:
                sock.close()

    def on_stream_changed(self, event: StreamChanged) -> None:
        """A stream's address or rules changed."""
        self._stream_changed(event.stream)

    def on_leg_opened(self, event: LegOpened) -> None:
        """Serve the sockets the probe bound for the leg."""
        self._open_leg(event.leg, event.local, event.port)

    def on_leg_closed(self, event: LegClosed) -> None:
        """Close the leg's sockets (or the probe's, if it was never served)."""
        self._close_leg(event.leg, event.local, event.port)

    def _stream_changed(self, stream: Stream) -> None:
        """The one place shortcuts are dropped: the stream's own, and the peer's, which
        sends through this stream's socket and whose kernel offload names its address."""
        transport, peer = stream.transport, stream.peer.transport
        if transport is DETACHED and peer is DETACHED:
            return  # no sockets yet (the U's leg B): nothing aims at anything
        if self.kernel is not None:
            self.take_back(stream)
        if isinstance(peer, StreamSocket):
            peer.unsettle()
        if isinstance(transport, StreamSocket):
            transport.unsettle()
            transport.aim(stream.remote)

    def _open_leg(self, leg: Leg, local: LocalAddress, port: int) -> None:
        pair = self._bound.pop((local, port), None)
        if pair is None:
            return  # the leg closed again before it was served
        adopted = self._adopted_connected
        for sock, stream, number in ((pair[0], leg.rtp, port), (pair[1], leg.rtcp, port + 1)):
            transport = StreamSocket(self, stream, sock, local, number)
            stream.transport = transport
            self.watch(sock, transport)
            if adopted:
                connected = adopted.pop(number, None)
                if connected is not None:
                    transport.adopt_connected(connected)
            if (
                stream.remote is not None
                or transport.connected is not None
                or isinstance(stream.peer.transport, StreamSocket)
            ):
                self._stream_changed(stream)  # else nothing to aim, nothing aimed at it

    def _close_leg(self, leg: Leg, local: LocalAddress, port: int) -> None:
        if self._bound:
            self._close_bound(local, port)  # bound but never served (a creating U that failed)
        if self.kernel is not None:
            for stream in leg.streams:
                self.take_back(stream)
            self.kernel.flush()  # now: the port may be handed to another session next
        for stream in leg.streams:
            transport = stream.transport
            if isinstance(transport, StreamSocket) and transport.port in (port, port + 1):
                transport.close()
                stream.transport = DETACHED
                peer = stream.peer.transport
                if isinstance(peer, StreamSocket):
                    peer.unsettle()

    def refresh_counters(self) -> None:
        """Fold the counts of kernel-forwarded packets into the streams."""
        if self.kernel is not None:
            self.kernel.sync()

    # --- in-kernel forwarding -----------------------------------------------------------

    def take_back(self, stream: Stream) -> None:
        """Stop kernel forwarding both directions that depend on ``stream``'s address."""
        if self.kernel is not None:
            self.kernel.withdraw(stream)
            self.kernel.withdraw(stream.peer)

    def _offer_to_kernel(self, stream: Stream) -> None:
        """Hand a settled stream to the kernel when it qualifies (both legs of one address
        family, symmetric, latched, peer address known, nothing tapping the media; for a
        packet between two other hosts, only when the host routes that family)."""
        kernel = self.kernel
        assert kernel is not None
        if not kernel.enabled:
            return
        source, peer = stream.remote, stream.peer
        dest = peer.remote
        inbound, outbound = stream.transport, peer.transport
        if (
            source is None
            or dest is None
            or not stream.latched
            or stream.leg.asymmetric
            or stream.leg.tap is not None
            or self.config.send_small_twice
            or not isinstance(inbound, StreamSocket)
            or not isinstance(outbound, StreamSocket)
            or inbound.local.ipv6 != outbound.local.ipv6  # the kernel does not translate
            or "%" in source.host  # a scoped (link-local) address: no nftables key
            or "%" in dest.host
            or outbound.connected is None
            or outbound.connected_to != dest
            or dest.port == 0
            or ipaddress.ip_address(dest.host).is_unspecified
        ):
            return
        ipv6 = inbound.local.ipv6
        if not (
            kernel.routes_between_hosts(ipv6)
            or self._is_local_host(source.host, ipv6)
            or self._is_local_host(dest.host, ipv6)
        ):
            return
        host, port = outbound.connected.getsockname()[:2]
        stream.take_sample(self.now)  # the kernel's sequence estimate starts from here
        kernel.offload(stream, source, inbound.port, dest, Endpoint(host, port))

    def _is_local_host(self, host: str, ipv6: bool) -> bool:
        return _remember(self._local_hosts, host, lambda: self.is_local_address(host, ipv6))

    # --- sockets and readers ---------------------------------------------------------

    def watch(self, sock: MediaSocket, reader: Callable[[], None]) -> None:
        """Start calling ``reader`` when ``sock`` is readable (or has an error to read),
        from when the command at hand is answered: what arrives meanwhile waits in the
        socket."""
        fd = sock.fileno()
        readers = self._readers
        if fd >= len(readers):
            readers.extend([None] * (fd + 1 - len(readers)))
        if readers[fd] is None:
            self._watched += 1
        readers[fd] = reader
        self._schedule_after_reply()
        self._to_watch.append(sock)

    def unwatch(self, sock: MediaSocket) -> None:
        """Stop reading ``sock`` at once, and close it once the command at hand is
        answered (a shared socket at once: see ``_shared_fds``)."""
        fd = sock.fileno()
        if fd < 0:
            return
        readers = self._readers
        if fd < len(readers) and readers[fd] is not None:
            readers[fd] = None
            self._watched -= 1
        if self._all_shared or fd in self._shared_fds:
            self._shared_fds.discard(fd)
            try:  # noqa: SIM105 (suppress() would cost an object per closed socket)
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # never registered, or the epoll set is closed already
            sock.close()
            return
        self._schedule_after_reply()
        self._to_close.append(sock)  # for a socket only we hold, closing leaves the epoll set

    def _schedule_after_reply(self) -> None:
        if not self._after_reply_due:
            self._after_reply_due = True
            self.loop.call_soon(self.run_after_reply)

    def run_after_reply(self) -> None:
        """Register and close the sockets commands left for after their replies, and
        make the spare sockets they took."""
        self._after_reply_due = False
        self._run_pending()
        self._refill_spares()

    def _run_pending(self) -> None:
        to_watch, self._to_watch = self._to_watch, []
        to_close, self._to_close = self._to_close, []
        readers = self._readers
        for sock in to_watch:
            fd = sock.fileno()
            if fd >= 0 and readers[fd] is not None:  # (not unwatched since)
                try:
                    self._epoll.register(fd, select.EPOLLIN)
                except OSError:  # a bug; the other sockets must still be served
                    log.exception("cannot watch media socket %d", fd)
        for sock in to_close:
            sock.close()

    def forwarder(self, stream: Stream) -> Callable[[bytes], None]:
        """The settled per-packet path of ``stream``: count, analyse, send on."""
        analysis = stream.rtp_analysis()
        relay = self
        counters = self.counters.relay
        peer = stream.peer  # wired for the session's life; its transport is not

        def forward(data: bytes) -> None:
            now = relay.now
            stream.fast_count += 1
            stream.fast_bytes += len(data)
            stream.seen_at = now
            if analysis is not None:
                analysis.feed(data, now)
            try:
                peer.transport.send(data)
            except OSError:
                counters.send_errors += 1

        return forward

    def connected_reader(self, transport: StreamSocket) -> Callable[[], None]:
        """Reader of the connected socket: every packet comes from ``connected_to``."""
        connected = transport.connected
        assert connected is not None
        recv = connected.recv
        forward = transport.forward
        slow = self.take_slow_path

        def on_readable() -> None:
            try:
                data = recv(MAX_DATAGRAM)
            except OSError:
                return  # EAGAIN, or an ICMP error for the peer: nothing to relay
            source = transport.connected_to
            if transport.fast_src == source and source is not None:
                forward(data)
                return
            if source is not None:
                slow(transport, data, source)

        return on_readable

    def take_slow_path(self, transport: StreamSocket, data: bytes, src: tuple[str, int]) -> None:
        """The slow path: the engine judges the packet; relay it, tap it, maybe settle."""
        stream = transport.stream
        if self.kernel is not None and src != stream.remote:
            self.kernel.refresh(stream, self.now)  # re-latching compares sequence numbers
        dest, settled, events, accepted, packets = self._judge(stream, data, src, self.now)
        if events:
            self._on_events(events)
        out_packets = (data,) if packets is None else packets
        if accepted and self.taps:
            sink = self.taps.get(stream.leg)
            if sink is not None:
                when = self.now + self._wall_offset
                for packet in out_packets:  # a re-packetized stream is recorded as sent
                    sink.feed(stream, packet, src, when)
        if dest is None:
            return
        if settled and not self.config.send_small_twice:  # -2 checks every packet's size
            transport.fast_src = src
            transport.twin()
            peer = stream.peer.transport
            if isinstance(peer, StreamSocket):
                peer.twin()
            if self.kernel is not None and not self.kernel.holds(stream):
                self._offer_to_kernel(stream)
        out = stream.peer.transport
        twice = self.config.send_small_twice
        for packet in out_packets:
            try:
                out.send(packet)
                if twice and len(packet) < SMALL_PACKET:
                    out.send(packet)
            except OSError:
                self.counters.relay.send_errors += 1
