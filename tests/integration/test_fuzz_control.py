"""The control-protocol fuzzer (benchmarks/fuzz_control.py) against a live relay.

20 000 commands over unix, cunix, udp and tcp: no crash, no hang, every reply one of the
protocol's forms, no internal error (E89), and the victim calls relay RTP throughout.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from .conftest import PYRTPPROXY, next_port_block

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fuzz_control

COUNT = 20_000
BUDGET = 60.0  # seconds: CI's bound for the whole run


def test_twenty_thousand_commands_hurt_nothing(tmp_path: Path) -> None:
    port_min, _port_max = next_port_block(1000)
    started = time.monotonic()
    with fuzz_control.started_relay(PYRTPPROXY, tmp_path, port_min, 1000) as (target, proc):
        result = fuzz_control.fuzz(target, COUNT, seed=12, time_limit=BUDGET)
        assert proc.poll() is None
    elapsed = time.monotonic() - started
    report = result.as_dict()
    assert result.ok, report
    assert result.commands == COUNT, report
    assert set(result.by_transport) == set(fuzz_control.TRANSPORTS)
    assert result.replies.get("port", 0) > 100, report  # sessions were really made
    assert elapsed < BUDGET, report
    log = (tmp_path / "relay.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"V", b"20040107"),
        (b"VF 20050322", b"1"),
        (b"U c 127.0.0.1 5000 ft", b"35000 127.0.0.1"),
        (b"U6 c ::1 5000 ft", b"35000 ::1 6"),
        (b"U c 127.0.0.1 5000 ft && S ttl=5", b"35000 && 0"),
        (b"L c 127.0.0.1 5000 ft tt", b"0"),
        (b"Qv c ft tt ttl rtpa_jmax", b"ttl=59 rtpa_jmax=0.000000"),
        (b"G", b""),
        (b"Il", b"sessions created: 1\nactive sessions: 1\naverage load: 0.000000"),
        (b"D c ft", b"E50"),
        (b"Z", b"E0"),
        (b"", b"E5"),
        (b"V\x00x", b"E5"),
        (b"V\x00\x00", b"20040107"),  # NUL padding is no part of a token
    ],
)
def test_reply_forms_the_protocol_has(command: bytes, reply: bytes) -> None:
    assert fuzz_control.check_reply(command, reply) is None


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"V", b"20040108"),
        (b"VF 20050322", b"2"),
        (b"Vx 1", b"0"),
        (b"U c 127.0.0.1 5000 ft", b"70000 127.0.0.1"),
        (b"U c 127.0.0.1 5000 ft", b"35000 127.0.0.1 6"),
        (b"U c 127.0.0.1 5000 ft", b"35000 localhost"),
        (b"L c 127.0.0.1 5000 ft tt", b"-1"),
        (b"D c ft", b"0 && 0"),
        (b"D c ft", b"E4"),
        (b"D c ft", b"E100"),
        (b"Q c ft tt", b""),
        (b"Q c ft tt", b"59 x"),
        (b"I", b"sessions created: 1\nbogus"),
        (b"X", b"0\n0"),
        (b"X", b"1"),
        (b"", b"0"),
        (b"A", b"0"),
        (b"Zsessions", b"not json"),
        (b"G", b"1" * 2000),
    ],
)
def test_replies_the_protocol_does_not_have(command: bytes, reply: bytes) -> None:
    assert fuzz_control.check_reply(command, reply) is not None


@pytest.mark.parametrize(("sig", "found"), [(signal.SIGKILL, "crashes"), (signal.SIGSTOP, "hangs")])
def test_a_crash_or_a_hang_is_reported(tmp_path: Path, sig: signal.Signals, found: str) -> None:
    port_min, _port_max = next_port_block(1000)
    with fuzz_control.started_relay(PYRTPPROXY, tmp_path, port_min, 1000) as (target, proc):

        def strike(result: fuzz_control.Result) -> None:
            if result.commands >= 1000:
                os.kill(proc.pid, sig)

        try:
            result = fuzz_control.fuzz(target, 5000, seed=3, batch=500, progress=strike)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
    assert getattr(result, found) == 1, result.as_dict()
    assert not result.ok and result.commands < 5000
