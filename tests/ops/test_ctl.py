"""``pyrtpproxy ctl`` against a live relay, and the Zsessions extension's guard rails."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyrtpproxy.config import ControlSpec
from pyrtpproxy.ctl import ControlClient
from pyrtpproxy.ctl.command import options_first

from .conftest import Party, RelayProcess, wait_for

CTL = [sys.executable, "-m", "pyrtpproxy", "ctl"]


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("transport", ["unix", "cunix", "udp"])
def test_raw_commands_over_each_transport(relay: RelayProcess, transport: str) -> None:
    spec = {"unix": relay.unix_spec, "cunix": f"cunix:{relay.cunix}", "udp": relay.udp_spec}[
        transport
    ]
    assert ctl("-s", spec, "V").stdout == "20040107\n"
    assert ctl("-s", spec, "VF", "20040107").stdout == "1\n"
    created = ctl("-s", spec, "U", f"c-{transport}", "127.0.0.1", "5000", "ftag")
    assert created.returncode == 0 and created.stdout.split()[0].isdigit()
    assert ctl("-s", spec, "G", "nsess_created").stdout == "1\n"
    assert ctl("-s", spec, "Gv", "nsess_created").stdout == "nsess_created=1\n"
    info = ctl("-s", spec, "I")
    assert info.stdout.splitlines()[1] == "active sessions: 1"
    unknown = ctl("-s", spec, "Z")
    assert (unknown.stdout, unknown.returncode) == ("E0\n", 1)


def test_sessions_over_unix_and_udp(relay: RelayProcess) -> None:
    caller, callee = Party(), Party()
    try:
        with ControlClient(ControlSpec.parse(relay.udp_spec)) as client:
            u_port = int(client.request(f"U call-ctl 127.0.0.1 {caller.port} from-t").split()[0])
            l_port = int(
                client.request(f"L call-ctl 127.0.0.1 {callee.port} from-t to-t").split()[0]
            )
        caller.send(l_port, 7)
        callee.send(u_port, 4)
        assert wait_for(lambda: caller.drain() + callee.drain() >= 4, 3.0)
        for spec in (relay.unix_spec, relay.udp_spec):
            listing = ctl("-s", spec, "sessions")
            assert listing.returncode == 0, listing.stderr
            lines = listing.stdout.splitlines()
            assert lines[0].startswith("CALL-ID")
            row = lines[1].split()
            assert row[:3] == ["call-ctl", "from-t", f"{l_port}/{u_port}"]
            assert row[3] == f"127.0.0.1:{caller.port}" and row[4] == f"127.0.0.1:{callee.port}"
            assert row[5:7] == ["7", "4"]
            assert lines[-1].startswith("1 session(s)")
        raw = json.loads(ctl("-s", relay.unix_spec, "sessions", "--json").stdout)
        assert raw[0]["from"]["latched"] and raw[0]["to"]["rtp_in"] == 4
        top = ctl("-s", relay.udp_spec, "--interval", "0.2", "--iterations", "2", "top")
        assert top.returncode == 0, top.stderr
        assert top.stdout.count("pyrtpproxy top") == 2 and "call-ctl" in top.stdout
    finally:
        caller.close()
        callee.close()


def test_sessions_pages_through_many(relay: RelayProcess) -> None:
    with ControlClient(ControlSpec.parse(f"cunix:{relay.cunix}")) as client:
        for i in range(40):
            assert client.request(f"U many-{i}-{'x' * 200} 127.0.0.1 {6000 + 2 * i} t{i}")[
                0
            ].isdigit()
        page = json.loads(client.request("Zsessions 0 5"))
        assert (page["total"], page["offset"], page["next"], len(page["sessions"])) == (40, 0, 5, 5)
    listing = ctl("-s", relay.udp_spec, "sessions", "--json")
    assert len(json.loads(listing.stdout)) == 40


def test_ctl_reports_unreachable_relay(tmp_path: object) -> None:
    result = ctl("-s", "unix:/nonexistent/r.sock", "V")
    assert result.returncode == 3 and "pyrtpproxy ctl:" in result.stderr


def test_normal_clients_see_no_change(relay: RelayProcess) -> None:
    with ControlClient(ControlSpec.parse(relay.udp_spec)) as client:
        assert client.request("V") == "20040107"
        assert client.request("VF 20040107") == "1"
        for word in ("Z", "Zx", "zsessions", "Zsessions foo", "A", "AAAA"):
            assert client.request(word) == "E0", word


def test_options_may_follow_sessions_word() -> None:
    assert options_first(["sessions", "--json"]) == ["--json", "sessions"]
    assert options_first(["-s", "udp:1.2.3.4", "top", "--iterations", "1"]) == [
        "-s", "udp:1.2.3.4", "--iterations", "1", "top",
    ]  # fmt: skip
    assert options_first(["-s", "x", "Q", "sessions", "t"]) == ["-s", "x", "Q", "sessions", "t"]
