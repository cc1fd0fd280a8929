"""``--kernel-forward auto|on|off`` on the command line and the start-up line it leads to
(the kernel path itself: tests/integration/test_kernel_forward.py, in namespaces)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pyrtpproxy.app import Relay
from pyrtpproxy.cli import build_config, relay_command
from pyrtpproxy.config import Config, ConfigError, ControlSpec, KernelMode

ENV = "PYRTPPROXY_KERNEL_FORWARD"


def parsed(*args: str) -> Config:
    context = relay_command.make_context("pyrtpproxy", ["-s", "unix:/tmp/k.sock", *args])
    return build_config(context.params)


@pytest.mark.parametrize(
    ("args", "mode"),
    [
        ((), KernelMode.AUTO),
        (("--kernel-forward",), KernelMode.ON),  # the flag of earlier versions
        (("--kernel-forward", "-f"), KernelMode.ON),
        (("--kernel-forward", "off"), KernelMode.OFF),
        (("--kernel-forward=auto",), KernelMode.AUTO),
    ],
)
def test_modes_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], mode: KernelMode
) -> None:
    monkeypatch.delenv(ENV)
    assert parsed(*args).kernel_forward is mode


def test_the_environment_sets_the_default_and_the_flag_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "off")
    assert parsed().kernel_forward is KernelMode.OFF
    assert parsed("--kernel-forward").kernel_forward is KernelMode.ON


def test_only_on_refuses_to_drop_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    assert parsed("-u", "root").kernel_forward is KernelMode.AUTO
    with pytest.raises(ConfigError, match="--kernel-forward on changes nftables"):
        parsed("--kernel-forward", "on", "-u", "root")
    with pytest.raises(ConfigError, match="--nft-table: bad nftables table name 'a-b'"):
        parsed("--nft-table", "a-b")


@pytest.mark.parametrize(
    ("mode", "uid", "line"),
    [
        (KernelMode.OFF, None, "kernel forwarding: off (--kernel-forward off)"),
        (KernelMode.AUTO, 1000, "kernel forwarding: off (auto: -u USER gives up CAP_NET_ADMIN)"),
    ],
)
def test_user_space_by_choice_is_said_in_one_line(
    caplog: pytest.LogCaptureFixture, mode: KernelMode, uid: int | None, line: str
) -> None:
    config = Config(control=(ControlSpec.parse("unix:/tmp/k.sock"),), kernel_forward=mode, uid=uid)
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.INFO, "pyrtpproxy"):
            assert Relay(config)._kernel_forwarder(loop) is None
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records] == [line]
