"""``-c fifo|rr`` and ``--nice``, applied as rtpproxy applies them: a real-time policy at
its highest priority or an error line and the default policy; a niceness or a start-up
error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import PYRTPPROXY, RelayFactory, parse_port

# Run the relay without CAP_SYS_NICE (as root: gone from the bounding and inheritable
# sets, so not regained at exec), the way a container without the capability runs it.
WITHOUT_SYS_NICE = ("setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "--")


def _may_set_real_time() -> bool:
    """Whether this test process could make itself real-time (CAP_SYS_NICE here)."""
    child = subprocess.run(
        ["chrt", "-r", "1", "true"], capture_output=True, check=False, timeout=10
    )
    return child.returncode == 0


@pytest.mark.parametrize(("flag", "policy"), [("rr", os.SCHED_RR), ("fifo", os.SCHED_FIFO)])
def test_real_time_policy_at_its_highest_priority_and_a_niceness(
    relay_factory: RelayFactory, flag: str, policy: int
) -> None:
    relay = relay_factory("-c", flag, "--nice", "5")
    assert os.getpriority(os.PRIO_PROCESS, relay.pid) == 5
    if _may_set_real_time():
        assert os.sched_getscheduler(relay.pid) == policy
        assert os.sched_getparam(relay.pid).sched_priority == os.sched_get_priority_max(policy)
        assert f"real-time scheduling SCHED_{flag.upper()}, priority " in relay.log_text()
    else:  # a machine that forbids it: the refusal path below, not a silent pass
        assert os.sched_getscheduler(relay.pid) == os.SCHED_OTHER
        assert "cannot set real-time scheduling" in relay.log_text()
    assert parse_port(relay.cmd("U c1 127.0.0.1 5000 ft"))


def test_refused_real_time_policy_is_logged_and_the_relay_runs_on(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory("-c", "rr", wrapper=WITHOUT_SYS_NICE)
    assert os.sched_getscheduler(relay.pid) == os.SCHED_OTHER
    log = relay.log_text()
    assert "cannot set real-time scheduling (-c rr, priority 99)" in log
    assert "CAP_SYS_NICE" in log
    assert parse_port(relay.cmd("U c1 127.0.0.1 5000 ft"))


def _start_up(tmp_path: Path, *args: str, wrapper: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run a relay that is expected to stop at start-up: its exit status and output."""
    done = subprocess.run(
        [*wrapper, *PYRTPPROXY, "-f", "-F", "-p", str(tmp_path / "pid"),
         "-s", f"unix:{tmp_path}/ctl", "-l", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
        cwd=tmp_path,
    )  # fmt: skip
    return done.returncode, done.stderr + done.stdout


def test_refused_niceness_is_a_start_up_error(tmp_path: Path) -> None:
    status, output = _start_up(tmp_path, "--nice", "-5", wrapper=WITHOUT_SYS_NICE)
    assert status == 1
    assert "--nice -5: cannot set the niceness" in output


def test_out_of_range_niceness_is_a_usage_error(tmp_path: Path) -> None:
    status, output = _start_up(tmp_path, "--nice", "21")
    assert status == 1
    assert "--nice" in output and "21" in output
