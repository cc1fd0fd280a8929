"""--overload_prot on a live relay under real load: new sessions get E98, calls go on.

No test hook: the relay measures its own event loop (its thread's CPU time over the last
2 s). A threshold of 0.1 is far above what an idle relay uses (a few timers a second) and
far below what a stream of pipelined commands costs it, so the test drives the relay into
overload with real work and lets it recover by stopping.
"""

from __future__ import annotations

import time
import urllib.request

from .conftest import LineClient, Relay, RelayFactory, free_port, parse_port, wait_for

FLOOD = b"G nsess_created npkts_rcvd\n" * 500
DEADLINE = 20.0  # seconds the relay gets to enter (and to leave) overload


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _burst(flood: LineClient) -> None:
    """Keep the relay's loop busy for a moment: 500 pipelined commands and their replies."""
    flood.send(FLOOD)
    for _ in range(500):
        flood.readline()


def _new_session(relay: Relay, n: int) -> str:
    reply = relay.cmd(f"U fresh{n} 127.0.0.1 6000 ft")
    if reply != "E98":
        assert parse_port(reply) and relay.cmd(f"D fresh{n} ft") == "0"
    return reply


def test_overload_refuses_new_sessions_and_recovers(relay_factory: RelayFactory) -> None:
    metrics = free_port()
    relay = relay_factory("--overload_prot=0.1", "--metrics-listen", f"127.0.0.1:{metrics}")
    a = parse_port(relay.cmd("U old 127.0.0.1 5000 ft"))
    b = parse_port(relay.cmd("L old 127.0.0.1 5002 ft tt"))
    assert _metric(metrics, "pyrtpproxy_overloaded") == 0
    n = 0
    with relay.tcp() as flood:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert time.monotonic() < deadline, "never overloaded"
            _burst(flood)
            n += 1
            if _new_session(relay, n) == "E98":
                break
        # overloaded: the existing call is served as always, between bursts of load
        _burst(flood)
        assert parse_port(relay.cmd("U old 127.0.0.1 5000 ft tt")) == a
        assert parse_port(relay.cmd("L old 127.0.0.1 5002 ft tt")) == b
        assert relay.cmd("Q old ft tt").split()[1:] == ["0", "0", "0", "0"]
        assert relay.udp("U old 127.0.0.1 5000 ft tt").split()[1] == str(a)
        _burst(flood)
        assert relay.cmd("U fresh-again 127.0.0.1 6000 ft") == "E98"
        assert _metric(metrics, "pyrtpproxy_overloaded") == 1
        assert _metric(metrics, "pyrtpproxy_sessions_refused_overload_total") >= 2
    # the load is gone: after the 2 s window new sessions are accepted again
    assert wait_for(lambda: _new_session(relay, 0) != "E98", DEADLINE, 0.2)
    assert _metric(metrics, "pyrtpproxy_overloaded") == 0
    assert relay.cmd("D old ft") == "0"
    log = relay.log_text()
    entered, left = log.count("overloaded: event loop"), log.count("overload over:")
    assert entered >= 1 and left == entered, log[-3000:]
