"""The relay hides what start-up made from the garbage collector, and nothing that ends."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopback import unix_command, unix_relay
from pyrtpproxy.app import Relay
from pyrtpproxy.config import Config, ControlSpec
from pyrtpproxy.engine.addresses import AddressPlan, LocalAddress
from pyrtpproxy.engine.session import Session


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the relay ran in this process: give the test run its collector back


def _config(tmp_path: Path) -> Config:
    return Config(
        control=(ControlSpec.parse(f"unix:{tmp_path / 'ctl.sock'}"),),
        addresses=AddressPlan(ipv4=(LocalAddress("127.0.0.1"),)),
        port_min=34000,
        port_max=34999,
        foreground=True,
        state_file=str(tmp_path / "journal"),
    )


async def _serve(config: Config, commands: list[str]) -> tuple[list[str], bool]:
    """Run a relay, send ``commands``; its replies, and whether the sessions it holds
    then are in the collector's sight."""
    relay = Relay(config)
    running = asyncio.create_task(relay.run())
    path = Path(config.control[0].path)
    loop = asyncio.get_running_loop()
    for _ in range(300):
        if path.exists() and relay.engine is not None:
            break
        await asyncio.sleep(0.01)
    replies = [await loop.run_in_executor(None, unix_command, path, c) for c in commands]
    tracked = {id(o) for o in gc.get_objects() if isinstance(o, Session)}
    assert relay.engine is not None
    sessions = list(relay.engine.table)
    relay.stop()
    assert await running == 0
    return replies, all(id(s) in tracked for s in sessions) and bool(sessions)


def _journal_with_a_session(tmp_path: Path) -> None:
    """A relay in a process of its own (it holds the journal's lock until it exits) keeps
    a session in the journal."""
    with unix_relay(tmp_path, (34000, 34999), "--state-file", str(tmp_path / "journal")):
        assert unix_command(tmp_path / "ctl.sock", "U c1 127.0.0.1 5000 ft").split()[0].isdigit()


def test_startup_objects_are_frozen_and_restored_sessions_are_not(tmp_path: Path) -> None:
    _journal_with_a_session(tmp_path)
    replies, collectable = asyncio.run(_serve(_config(tmp_path), ["Q c1 ft"]))
    assert gc.get_freeze_count() > 1000  # modules, configuration
    assert not replies[0].startswith("E")  # the session came back from the journal
    # it ends some day, and a session holds cycles: the collector must still see it
    assert collectable
