"""Metrics move as calls flow: a live relay, real RTP on loopback, real scrapes."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyrtpproxy.config import ControlSpec
from pyrtpproxy.ctl import ControlClient
from pyrtpproxy.engine.counters import COUNTER_NAMES, RelayCounters
from pyrtpproxy.observe.metrics import G_COUNTER_METRICS, RELAY_COUNTER_METRICS

from .conftest import Party, RelayProcess, free_port, wait_for


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def call(relay: RelayProcess, call_id: str, caller: Party, callee: Party) -> tuple[int, int]:
    """Set up a call; returns (port the caller sends to, port the callee sends to)."""
    with ControlClient(ControlSpec.parse(relay.udp_spec)) as client:
        to_callee = int(client.request(f"U {call_id} 127.0.0.1 {caller.port} ftag").split()[0])
        to_caller = int(client.request(f"L {call_id} 127.0.0.1 {callee.port} ftag ttag").split()[0])
    # the callee's media goes to the U port, the caller's to the L port
    return to_caller, to_callee


def test_every_scalar_count_of_ours_is_exported() -> None:
    scalars = {f.name for f in fields(RelayCounters) if f.type in ("int", int)}
    # bytes_relayed is live+ended; kernel_packets goes out split by path
    assert set(RELAY_COUNTER_METRICS) == scalars - {"bytes_relayed", "kernel_packets"}


def test_every_g_counter_maps_to_one_metric() -> None:
    assert set(G_COUNTER_METRICS) == set(COUNTER_NAMES)
    names = [short for short, _kind, _help in G_COUNTER_METRICS.values()]
    assert len(names) == len(set(names))
    assert all(help_text for _short, _kind, help_text in G_COUNTER_METRICS.values())


def test_metrics_follow_a_call(relay: RelayProcess) -> None:
    before = scrape(relay.metrics_port)
    assert value(before, "pyrtpproxy_sessions_active") == 0
    assert value(before, "pyrtpproxy_packets_relayed_total") == 0
    assert value(before, "pyrtpproxy_max_fds") >= value(before, "pyrtpproxy_open_fds") > 0
    caller, callee = Party(), Party()
    try:
        caller_port, callee_port = call(relay, "m1", caller, callee)
        caller.send(caller_port, 20)
        callee.send(callee_port, 20)
        assert wait_for(lambda: callee.drain() + caller.drain() > 0, 3.0)

        def relayed() -> float:
            return value(scrape(relay.metrics_port), "pyrtpproxy_packets_relayed_total")

        assert wait_for(lambda: relayed() >= 30, 3.0)
        during = scrape(relay.metrics_port)
        assert value(during, "pyrtpproxy_sessions_active") == 1
        assert value(during, "pyrtpproxy_sessions_created_total") == 1
        assert value(during, "pyrtpproxy_sessions_completed_total") == 1
        assert value(during, "pyrtpproxy_ports_in_use") == 2
        assert (
            value(during, "pyrtpproxy_ports_free") == value(during, "pyrtpproxy_ports_capacity") - 2
        )
        assert value(during, "pyrtpproxy_legs_latched_total", protocol="rtp") >= 2
        assert value(during, "pyrtpproxy_commands_total", command="Update", result="ok") == 2
        assert value(during, "pyrtpproxy_command_duration_seconds_count", command="Update") == 2
        assert any(name == "pyrtpproxy_build_info" for name, _labels in during)

        # a stranger's packets to a latched port are dropped as wrong_source
        stranger = Party()
        try:
            stranger.send(caller_port, 5, start=5000)
            assert wait_for(
                lambda: (
                    value(
                        scrape(relay.metrics_port),
                        "pyrtpproxy_packets_dropped_total",
                        reason="wrong_source",
                    )
                    >= 5
                ),
                3.0,
            )
        finally:
            stranger.close()

        with ControlClient(ControlSpec.parse(relay.unix_spec)) as client:
            assert client.request("D m1 ftag ttag") == "0"
        after = scrape(relay.metrics_port)
        assert value(after, "pyrtpproxy_sessions_active") == 0
        assert value(after, "pyrtpproxy_sessions_deleted_total") == 1
        assert value(after, "pyrtpproxy_sessions_destroyed_total") == 1
        assert value(after, "pyrtpproxy_ports_in_use") == 0
        # totals survive the session; every relayed packet here is 172 bytes of RTP
        assert value(after, "pyrtpproxy_packets_relayed_total") >= 30
        assert value(after, "pyrtpproxy_bytes_relayed_total") == 172 * value(
            after, "pyrtpproxy_packets_relayed_total"
        )
        assert value(after, "pyrtpproxy_packets_dropped_total", reason="wrong_source") >= 5
    finally:
        caller.close()
        callee.close()


PROMETHEUS = shutil.which("prometheus")


def _prom_query(port: int, query: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            data = json.loads(response.read())
    except OSError:
        return None
    result = data.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
def test_prometheus_scrapes_packets_relayed(relay: RelayProcess, tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    web_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: pyrtpproxy\n    scrape_interval: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{relay.metrics_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    caller, callee = Party(), Party()
    try:
        query = 'pyrtpproxy_packets_relayed_total{job="pyrtpproxy"}'
        first = wait_for(lambda: _prom_query(web_port, query) is not None, 20.0, 0.25)
        assert first, (tmp_path / "prometheus.log").read_text()[-2000:]
        start = _prom_query(web_port, query)
        assert start is not None
        caller_port, callee_port = call(relay, "p1", caller, callee)
        caller.send(caller_port, 25)
        callee.send(callee_port, 25)
        assert wait_for(lambda: (_prom_query(web_port, query) or 0) > start, 15.0, 0.25)
        assert (_prom_query(web_port, "pyrtpproxy_sessions_active") or 0) == 1
    finally:
        caller.close()
        callee.close()
        prometheus.terminate()
        try:
            prometheus.wait(10)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait(5)
        log.close()


def test_docs_list_every_metric(relay: RelayProcess) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    exported = {
        name for name, _labels in scrape(relay.metrics_port) if name.startswith("pyrtpproxy_")
    }
    for name in exported:
        base = name
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix) and "duration" in name:
                base = name.removesuffix(suffix)
        assert f"`{base}`" in doc, name
