"""A real relay process on loopback for the operations tests."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loopback import Party as Party
from loopback import free_port as free_port
from loopback import rtp_packet as rtp_packet
from loopback import stop_process
from loopback import wait_for as wait_for

PYRTPPROXY = [sys.executable, "-m", "pyrtpproxy"]


@dataclass
class RelayProcess:
    tmp: Path
    unix: str
    cunix: str
    udp_port: int
    metrics_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def unix_spec(self) -> str:
        return f"unix:{self.unix}"

    @property
    def udp_spec(self) -> str:
        return f"udp:127.0.0.1:{self.udp_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def start_relay(tmp: Path, *extra: str) -> RelayProcess:
    base = random.randrange(20000, 30000, 2)
    relay = RelayProcess(
        tmp=tmp,
        unix=str(tmp / "r.sock"),
        cunix=str(tmp / "c.sock"),
        udp_port=free_port(socket.SOCK_DGRAM),
        metrics_port=free_port(),
        log=tmp / "relay.log",
        extra=list(extra),
    )
    args = [
        *PYRTPPROXY, "-f", "-F", "-p", "/dev/null", "-d", "INFO",
        "-l", "127.0.0.1", "-m", str(base), "-M", str(base + 200),
        "-s", relay.unix_spec, "-s", f"cunix:{relay.cunix}", "-s", relay.udp_spec,
        "--metrics-listen", f"127.0.0.1:{relay.metrics_port}",
        *extra,
    ]  # fmt: skip
    handle = relay.log.open("wb")
    relay.proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp)
    handle.close()

    def ready() -> bool:
        if relay.proc is not None and relay.proc.poll() is not None:
            raise RuntimeError(f"relay exited: {relay.log_text()}")
        # The start-up line comes after every control socket is bound, unlike the metrics port.
        return " started, media ports " in relay.log_text()

    if not wait_for(ready, 10.0):
        relay.stop()
        raise RuntimeError(f"relay did not start: {relay.log_text()}")
    return relay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path)
    try:
        yield process
    finally:
        process.stop()
