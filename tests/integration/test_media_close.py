"""Closing a leg must disarm the opposite streams' fast path, which sends through it."""

from __future__ import annotations

import asyncio

from pyrtpproxy.engine.addresses import Endpoint, LocalAddress
from pyrtpproxy.engine.session import DETACHED, Session
from pyrtpproxy.media.relay import MediaConfig, MediaRelay


def test_closing_a_leg_disarms_the_peer_fast_path() -> None:
    loop = asyncio.new_event_loop()
    relay = MediaRelay(loop, MediaConfig())
    try:
        session = Session(b"c", b"t", 0.0)
        a, b = session.legs
        local = LocalAddress("127.0.0.1")
        for leg in (a, b):
            leg.port = next(p for p in range(31000, 32000, 2) if relay.open_leg(leg, local, p))
        for stream in b.streams:
            stream.fast_src = Endpoint("127.0.0.1", 5000)
        relay.close_leg(a)
        assert all(s.transport is DETACHED for s in a.streams)
        assert all(s.fast_src is None for s in b.streams)
        relay.close_leg(b)
    finally:
        relay.close()
        loop.close()
