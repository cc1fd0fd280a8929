"""Control socket framing that needs a running event loop (the rest is in integration)."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.support import FakeClock, make_engine
from pyrtpproxy.control.processor import CommandProcessor
from pyrtpproxy.control.server import OneShotProtocol


class Transport(asyncio.Transport):
    """What a protocol writes and whether it closed, without a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closes = 0

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    @property
    def closed(self) -> bool:
        return self.closes > 0

    def close(self) -> None:
        self.closes += 1

    def is_closing(self) -> bool:
        return self.closed


def _one_shot(idle: float) -> tuple[OneShotProtocol, Transport]:
    processor = CommandProcessor(make_engine(), FakeClock())
    protocol = OneShotProtocol(processor, asyncio.get_running_loop(), idle=idle)
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


def test_a_silent_unix_connection_is_closed_after_the_idle_time() -> None:
    async def scenario() -> Transport:
        _protocol, transport = _one_shot(idle=0.05)
        await asyncio.sleep(0.01)
        assert not transport.closed  # a client gets time to write
        await asyncio.sleep(0.1)
        return transport

    transport = asyncio.run(scenario())
    assert transport.closed and transport.written == b""


def test_a_unix_command_is_answered_and_its_timer_dropped() -> None:
    async def scenario() -> Transport:
        protocol, transport = _one_shot(idle=0.05)
        protocol.data_received(b"V")
        await asyncio.sleep(0.1)
        return transport

    transport = asyncio.run(scenario())
    assert transport.written == b"20040107\n"
    assert transport.closes == 1  # the idle timer did not fire after the reply
