"""The media layer carries out the engine's leg and stream events on real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from loopback import udp_port_taken
from pyrtpproxy.engine.addresses import Endpoint, LocalAddress
from pyrtpproxy.engine.engine import Forwarding
from pyrtpproxy.engine.events import LegClosed, LegOpened, Outbox, StreamChanged
from pyrtpproxy.engine.session import DETACHED, Leg, Session, Stream
from pyrtpproxy.media.relay import MediaConfig, MediaRelay, StreamSocket

LOCAL = LocalAddress("127.0.0.1")


@pytest.fixture
def relay() -> Iterator[MediaRelay]:
    loop = asyncio.new_event_loop()
    media = MediaRelay(loop, MediaConfig())
    try:
        yield media
    finally:
        media.close()
        loop.close()


def _session() -> Session:
    return Session(b"c", b"t", 0.0, Outbox(lambda event: None))


def _open(relay: MediaRelay, leg: Leg) -> int:
    port = next(p for p in range(31000, 32000, 2) if relay.try_bind(LOCAL, p))
    leg.local, leg.port = LOCAL, port
    relay.apply(LegOpened(leg, LOCAL, port))
    return port


def _transport(leg: Leg, rtcp: bool = False) -> StreamSocket:
    transport = (leg.rtcp if rtcp else leg.rtp).transport
    assert isinstance(transport, StreamSocket)
    return transport


def _free_pair(start: int) -> int:
    """An even port from ``start`` on that is free, with the port above it."""
    free = (p for p in range(start, start + 1000, 2) if not udp_port_taken(p))
    return next(p for p in free if not udp_port_taken(p + 1))


def _answered(relay: MediaRelay) -> None:
    """The command at hand is answered: the loop runs what waited for its reply."""
    relay.loop.run_until_complete(asyncio.sleep(0))


def test_closing_a_leg_disarms_the_peer_fast_path(relay: MediaRelay) -> None:
    a, b = _session().legs
    port_a = _open(relay, a)
    _open(relay, b)
    for stream in b.streams:
        _transport(b, stream.is_rtcp).fast_src = Endpoint("127.0.0.1", 5000)
    relay.apply(LegClosed(a, LOCAL, port_a))
    assert all(s.transport is DETACHED for s in a.streams)
    assert all(_transport(b, rtcp).fast_src is None for rtcp in (False, True))
    _answered(relay)
    assert not udp_port_taken(port_a) and not udp_port_taken(port_a + 1)


def test_the_probe_holds_the_ports_until_the_leg_opens_or_closes(relay: MediaRelay) -> None:
    a, _b = _session().legs
    port = next(p for p in range(32000, 33000, 2) if relay.try_bind(LOCAL, p))
    assert udp_port_taken(port) and udp_port_taken(port + 1)
    # a creating U that failed after the probe: the ports go back
    relay.apply(LegClosed(a, LOCAL, port))
    assert not udp_port_taken(port) and not udp_port_taken(port + 1)
    assert a.rtp.transport is DETACHED


def test_a_changed_stream_is_reaimed_and_loses_its_shortcuts(relay: MediaRelay) -> None:
    a, b = _session().legs
    _open(relay, a)
    _open(relay, b)
    rtp = _transport(a)
    assert rtp.connected is None  # no remote yet: nothing to connect to
    a.rtp.remote = Endpoint("127.0.0.1", 40000)
    rtp.fast_src = a.rtp.remote
    _transport(b).fast_src = Endpoint("127.0.0.1", 40002)
    relay.apply(StreamChanged(a.rtp))
    # signalling alone sends from the one socket; the twin comes with settled media
    assert rtp.connected is None and rtp.target == Endpoint("127.0.0.1", 40000)
    # the peer sends through this stream's socket, so its shortcut goes too
    assert rtp.fast_src is None and _transport(b).fast_src is None
    rtp.twin()
    assert rtp.connected is not None and rtp.connected_to == Endpoint("127.0.0.1", 40000)
    assert rtp.connected.getpeername() == ("127.0.0.1", 40000)
    a.rtp.remote = Endpoint("127.0.0.1", 40010)
    relay.apply(StreamChanged(a.rtp))
    assert rtp.connected.getpeername() == ("127.0.0.1", 40010)  # the twin follows the remote
    a.rtp.remote = None
    relay.apply(StreamChanged(a.rtp))
    assert rtp.connected is None


def _registered(relay: MediaRelay) -> int:
    """How many descriptors the relay's epoll set holds, as the kernel tells."""
    with open(f"/proc/self/fdinfo/{relay._epoll.fileno()}") as info:
        return sum(line.startswith("tfd:") for line in info)


def test_closed_legs_leave_the_epoll_set(relay: MediaRelay) -> None:
    for _ in range(20):
        a, b = _session().legs
        ports = _open(relay, a), _open(relay, b)
        _answered(relay)
        assert _registered(relay) == 4
        for leg, port in zip((a, b), ports, strict=True):
            relay.apply(LegClosed(leg, LOCAL, port))
        _answered(relay)
        assert _registered(relay) == 0


def test_a_socket_another_process_shares_is_unregistered_before_it_closes(
    relay: MediaRelay,
) -> None:
    # A previous relay's sockets: it holds the same sockets until it exits, so closing
    # ours alone would leave them in the epoll set.
    port = _free_pair(33000)
    theirs = []
    for number in (port, port + 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", number))
        theirs.append(sock)
    relay.adopt([socket.socket(fileno=os.dup(sock.fileno())) for sock in theirs])
    a, _b = _session().legs
    assert relay.try_bind(LOCAL, port)
    a.local, a.port = LOCAL, port
    relay.apply(LegOpened(a, LOCAL, port))
    _answered(relay)
    assert _registered(relay) == 2
    relay.apply(LegClosed(a, LOCAL, port))
    assert _registered(relay) == 0  # at once: the fd number may be reused before the reply
    for sock in theirs:
        sock.close()


def test_once_handed_over_every_socket_is_unregistered_before_it_closes(
    relay: MediaRelay,
) -> None:
    a, _b = _session().legs
    port = _open(relay, a)
    _answered(relay)
    successor = [os.dup(fd) for fd in relay.handover_sockets()]  # a hand-over that failed
    relay.apply(LegClosed(a, LOCAL, port))
    assert _registered(relay) == 0
    for fd in successor:
        os.close(fd)


def test_sockets_are_watched_and_closed_once_the_command_is_answered(
    relay: MediaRelay,
) -> None:
    # The proxy's worker waits for the reply, not for epoll_ctl and close: those follow it.
    judged: list[tuple[Stream, bytes]] = []

    def slow_path(stream: Stream, data: bytes, src: tuple[str, int], now: float) -> Forwarding:
        judged.append((stream, data))
        return Forwarding(None, False, (), False)

    relay.connect_engine(slow_path, lambda events: None)
    a, b = _session().legs
    port = _open(relay, a)
    _open(relay, b)
    assert _registered(relay) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as party:
        party.sendto(b"early", ("127.0.0.1", port))  # before the reply: it waits, not lost
        _answered(relay)
        assert _registered(relay) == 4
        for _ in range(100):
            if judged:
                break
            _answered(relay)
        assert judged == [(a.rtp, b"early")]
    relay.apply(LegClosed(a, LOCAL, port))
    assert a.rtp.transport is DETACHED and udp_port_taken(port)  # not read, not closed yet
    _answered(relay)
    assert not udp_port_taken(port) and not udp_port_taken(port + 1) and _registered(relay) == 2


def test_a_port_a_closed_leg_still_holds_is_bound_again_at_once(relay: MediaRelay) -> None:
    a, _b = _session().legs
    port = _open(relay, a)
    _answered(relay)
    relay.apply(LegClosed(a, LOCAL, port))
    assert relay.try_bind(LOCAL, port)  # a U right after the D, in the same batch


def test_descriptors_of_closed_legs_count_until_they_are_closed(relay: MediaRelay) -> None:
    a, _b = _session().legs
    port = _open(relay, a)
    _answered(relay)
    held = relay._media_sockets()  # the leg's two sockets, and the spares made since
    relay.apply(LegClosed(a, LOCAL, port))
    assert relay._media_sockets() == held  # closing, not closed
    relay._fd_budget = held + 2  # no room for a leg while they are held
    other = _free_pair(34000)
    assert relay.try_bind(LOCAL, other)  # closed legs and spares gave their descriptors back
    assert relay._media_sockets() == 2


def test_spare_sockets_are_made_after_the_reply_and_bound_by_the_next_leg(
    relay: MediaRelay,
) -> None:
    a, b = _session().legs
    _open(relay, a)
    assert relay._spare_count == 0  # the first leg made its own
    _answered(relay)
    assert relay._spare_count == 4
    port = _open(relay, b)  # binds two spares: no socket() on the way to the reply
    assert relay._spare_count == 2 and udp_port_taken(port) and udp_port_taken(port + 1)
    _answered(relay)
    assert relay._spare_count == 4 and _registered(relay) == 4
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port + 10))
        assert not relay.try_bind(LOCAL, port + 10)  # busy: the spare stays unbound
        assert relay._spare_count == 4
    assert relay.try_bind(LOCAL, port + 10)
