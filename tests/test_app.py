"""app.py wiring that is cheaper to check without a running relay."""

from __future__ import annotations

import asyncio
import typing

from pyrtpproxy.app import Relay
from pyrtpproxy.config import Config, ControlSpec
from pyrtpproxy.control.notify import Notifier
from pyrtpproxy.engine.events import Event
from pyrtpproxy.media.relay import MediaConfig, MediaRelay


def test_every_event_kind_has_exactly_one_handler() -> None:
    loop = asyncio.new_event_loop()
    media = MediaRelay(loop, MediaConfig())
    try:
        relay = Relay(Config(control=(ControlSpec.parse("unix:/tmp/x.sock"),)))
        handlers = relay._event_handlers(media, Notifier())
        assert set(handlers) == set(typing.get_args(Event))
    finally:
        media.close()
        loop.close()
