"""Fixtures for the end-to-end tests: a namespace lab (phones behind NAT) per test
session, and a relay + Kamailio stack per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from .lab import Lab, Stack, cleanup_leftovers, relay_command, tools_missing


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "end-to-end tests need root (network namespaces, nftables)"
    missing = tools_missing()
    if missing:
        return f"end-to-end tests need {', '.join(missing)} (Debian: kamailio sip-tester nftables)"
    return None


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    relay = relay_command()
    if shutil.which(relay[0]) is None:
        pytest.fail(f"relay under test not found: {relay[0]} (set PYRTPPROXY_E2E_RELAY)")
    keep = os.environ.get("PYRTPPROXY_E2E_KEEP")  # keep the work directory for debugging
    workdir = Path(tempfile.mkdtemp(prefix="pyrtpproxy-e2e-"))
    cleanup_leftovers()
    the_lab = Lab(workdir)
    try:
        the_lab.create()
        the_lab.start_agents()
        yield the_lab
    finally:
        the_lab.destroy()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"e2e work directory kept: {workdir}")


@pytest.fixture
def make_stack(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def factory(
        relays: int = 1,
        ttl: int = 60,
        relay_flags: Sequence[str] = (),
        kamailio_defines: Sequence[str] = (),
    ) -> Stack:
        name = f"{request.node.name}-{len(stacks)}".replace("[", "-").replace("]", "")
        stack = Stack(lab, name, relays=relays, ttl=ttl, relay_flags=relay_flags)
        stacks.append(stack)
        stack.start(extra_defines=kamailio_defines)
        return stack

    lab.clear_media_results()
    yield factory
    for stack in stacks:
        stack.stop()
