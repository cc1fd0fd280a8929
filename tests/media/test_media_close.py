"""The media layer carries out the engine's leg and stream events on real sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from pyrtpproxy.engine.addresses import Endpoint, LocalAddress
from pyrtpproxy.engine.events import LegClosed, LegOpened, Outbox, StreamChanged
from pyrtpproxy.engine.session import DETACHED, Leg, Session
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


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def test_closing_a_leg_disarms_the_peer_fast_path(relay: MediaRelay) -> None:
    a, b = _session().legs
    port_a = _open(relay, a)
    _open(relay, b)
    for stream in b.streams:
        _transport(b, stream.is_rtcp).fast_src = Endpoint("127.0.0.1", 5000)
    relay.apply(LegClosed(a, LOCAL, port_a))
    assert all(s.transport is DETACHED for s in a.streams)
    assert all(_transport(b, rtcp).fast_src is None for rtcp in (False, True))
    assert not _port_taken(port_a) and not _port_taken(port_a + 1)


def test_the_probe_holds_the_ports_until_the_leg_opens_or_closes(relay: MediaRelay) -> None:
    a, _b = _session().legs
    port = next(p for p in range(32000, 33000, 2) if relay.try_bind(LOCAL, p))
    assert _port_taken(port) and _port_taken(port + 1)
    # a creating U that failed after the probe: the ports go back
    relay.apply(LegClosed(a, LOCAL, port))
    assert not _port_taken(port) and not _port_taken(port + 1)
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
