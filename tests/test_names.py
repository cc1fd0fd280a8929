"""Advertised addresses by DNS name: resolved at start, again on a schedule, the last
good one kept on failure; with an injected resolver, and ``localhost`` for real."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from loopback import unix_command, unix_relay
from pyrtpproxy.app import Relay, prepare
from pyrtpproxy.config import Config, ConfigError, ControlSpec
from pyrtpproxy.engine.addresses import AddressPlan, LocalAddress
from pyrtpproxy.names import AdvertisedNames, is_name, system_resolver


class FakeDns:
    """Answers from a table the test changes; a missing name fails like the resolver."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.asked = 0

    def __call__(self, name: str, ipv6: bool) -> str:
        self.asked += 1
        if name not in self.answers:
            raise OSError(-2, "Name or service not known")
        return self.answers[name]


def test_names_and_numbers() -> None:
    assert is_name("relay.example.net") and is_name("localhost")
    assert not is_name("203.0.113.10") and not is_name("[2001:db8::1]")


def test_a_changed_answer_is_taken_and_a_failure_keeps_the_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dns = FakeDns({"relay.test": "192.0.2.1"})
    names = AdvertisedNames({"relay.test": False}, dns)
    assert names.apply(names.lookup()) == [("relay.test", "192.0.2.1")]
    assert names.apply(names.lookup()) == []  # unchanged
    dns.answers["relay.test"] = "192.0.2.2"
    assert names.apply(names.lookup()) == [("relay.test", "192.0.2.2")]
    del dns.answers["relay.test"]
    caplog.set_level(logging.INFO, logger="pyrtpproxy.names")
    for _ in range(3):
        assert names.apply(names.lookup()) == []
    assert names.current == {"relay.test": "192.0.2.2"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per failure streak
    assert "still advertising 192.0.2.2" in warnings[0].getMessage()
    dns.answers["relay.test"] = "192.0.2.2"
    assert names.apply(names.lookup()) == []
    assert "resolves again" in caplog.records[-1].getMessage()


def _config(tmp_path: Path, advertised: str, **extra: object) -> Config:
    return Config(
        control=(ControlSpec.parse(f"unix:{tmp_path / 'ctl.sock'}"),),
        addresses=AddressPlan(ipv4=(LocalAddress("127.0.0.1", advertised=advertised),)),
        port_min=31000,
        port_max=31999,
        foreground=True,
        **extra,  # type: ignore[arg-type]
    )


def test_a_name_that_does_not_resolve_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"-A relay\.invalid: cannot resolve"):
        prepare(_config(tmp_path, "relay.invalid"), FakeDns({}))
    prepare(_config(tmp_path, "relay.test"), FakeDns({"relay.test": "192.0.2.1"}))


def test_replies_follow_the_name_while_the_relay_runs(tmp_path: Path) -> None:
    dns = FakeDns({"relay.test": "192.0.2.1"})
    config = _config(tmp_path, "relay.test", resolve_interval=0.05)
    path = tmp_path / "ctl.sock"

    async def scenario() -> tuple[str, str, str]:
        relay = Relay(config, resolver=dns)
        running = asyncio.create_task(relay.run())
        loop = asyncio.get_running_loop()
        for _ in range(200):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        first = await loop.run_in_executor(None, unix_command, path, "U c1 127.0.0.1 5000 ft")
        dns.answers["relay.test"] = "192.0.2.2"
        await asyncio.sleep(0.3)
        second = await loop.run_in_executor(None, unix_command, path, "U c2 127.0.0.1 5000 ft")
        again = await loop.run_in_executor(None, unix_command, path, "U c1 127.0.0.1 5000 ft")
        relay.stop()
        assert await running == 0
        return first, second, again

    first, second, again = asyncio.run(scenario())
    assert first.split()[1] == "192.0.2.1"
    assert second.split()[1] == "192.0.2.2"
    assert again.split()[1] == "192.0.2.2"  # an existing session's reply follows too
    assert dns.asked >= 3


def test_localhost_for_real(tmp_path: Path) -> None:
    assert system_resolver("localhost", False) == "127.0.0.1"
    with unix_relay(tmp_path, (32000, 32099), "-A", "localhost"):
        reply = unix_command(tmp_path / "ctl.sock", "U c 127.0.0.1 5000 ft")
        assert reply.endswith(" 127.0.0.1\n"), reply
    bad = subprocess.run(
        [sys.executable, "-m", "pyrtpproxy", "-f", "-F", "-A", "no-such-name.invalid",
         "-s", f"unix:{tmp_path / 'b.sock'}", "-p", str(tmp_path / "pid2")],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.startswith("pyrtpproxy: -A no-such-name.invalid: cannot resolve"), bad.stderr
