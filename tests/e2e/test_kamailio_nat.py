"""End-to-end: real Kamailio (contrib/kamailio/kamailio.cfg) + sipp phones behind
NAT routers that remap ports, media anchored on the relay under test.

Run as root:  .venv/bin/pytest -m e2e tests/e2e -v
The relay command is $PYRTPPROXY_E2E_RELAY (default .venv/bin/pyrtpproxy).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .lab import NAT_PORTS, PUB_IP, UAC_IP, CallRun, Lab, Stack, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


def finish(stack: Stack, run: CallRun, timeout: float = 60) -> None:
    """Wait for both sipp instances and fail with their traces if a call failed."""
    for proc in (run.uac, run.uas):
        try:
            rc = proc.wait(timeout)
        except Exception:
            proc.stop()
            rc = -1
        if rc != 0:
            kam = stack.kamailio.output()[-6000:] if stack.kamailio else ""
            pytest.fail(
                f"{proc.name} exited with {rc}\n{stack.sip_trace(proc)}\n--- kamailio\n{kam}"
            )


def relay_log(stack: Stack, index: int = 0) -> str:
    relay = stack.relays[index].proc
    assert relay is not None
    return relay.output()


def call_ids(run: CallRun, calls: int) -> set[str]:
    """sipp's Call-IDs are "<call number>-<sipp pid>@<local ip>"."""
    return {f"{n}-{run.uac.popen.pid}@{UAC_IP}" for n in range(1, calls + 1)}


def check_media(stack: Stack, ids: set[str], min_packets: int = 20) -> None:
    """Every call's media reached both phones, from the relay's public address."""
    lab = stack.lab

    def complete() -> bool:
        return ids <= set(lab.media_results("uac")) and ids <= set(lab.media_results("uas"))

    with contextlib.suppress(TimeoutError):
        wait_for(complete, 10, "media agent results")
    uac, uas = lab.media_results("uac"), lab.media_results("uas")
    assert ids <= set(uac), f"no caller media results for {ids - set(uac)}"
    assert ids <= set(uas), f"no callee media results for {ids - set(uas)}"
    for cid in ids:
        for phone, res in (("caller", uac[cid]), ("callee", uas[cid])):
            remote = res["remote"]
            assert isinstance(remote, list)
            # the SDP this phone got points at the relay, not at the other phone
            assert remote[0] == PUB_IP, f"{phone} SDP of {cid} points at {remote}"
            assert int(remote[1]) != int(res["local_port"])
            assert int(res["sent"]) > 0, f"{phone} of {cid} sent nothing"
            received = int(res["received"])
            assert received >= min_packets, f"{phone} of {cid} received {received} RTP packets"
            sources = res["sources"]
            assert isinstance(sources, dict)
            # everything came from the relay's port that was put into the SDP
            assert set(sources) == {f"{PUB_IP}:{remote[1]}"}, sources


def test_call_through_nat(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    lab = stack.lab
    mapped_before = lab.nat_counter("nat1") + lab.nat_counter("nat2")
    run = stack.calls(calls=1, pause_ms=3000)
    finish(stack, run)
    check_media(stack, call_ids(run, 1))
    # RTP from the relay arrived at the NAT routers on NAT-mapped ports (20000-29999),
    # which differ from every port a phone uses: the relay latched onto the mappings.
    mapped = lab.nat_counter("nat1") + lab.nat_counter("nat2") - mapped_before
    assert mapped >= 40, f"only {mapped} packets to NAT-mapped ports {NAT_PORTS}"
    # after the BYE the session is gone
    wait_for(lambda: stack.info(0).get("active sessions") == 0, 5, "no active sessions")
    g = stack.counters(0, "nsess_created", "nsess_destroyed", "nsess_complete", "npkts_relayed")
    assert g["nsess_created"] >= 1
    assert g["nsess_destroyed"] == g["nsess_created"]
    assert g["nsess_complete"] >= 1
    assert g["npkts_relayed"] >= 40
    assert stack.info(0)["active streams"] == 0
    # Kamailio signalled the phones' public NAT addresses: with the default latching
    # policy both RTP streams latched on their first packet, without a learning window
    log = relay_log(stack)
    assert len(re.findall(r"session latched: .* RTP to .* \(signalled host\)", log)) == 2, log
    assert "session learning:" not in log and "source-refused" not in log


def test_call_with_private_sdp_addresses_learns_after_the_window(
    make_stack: Callable[..., Stack],
) -> None:
    """Kamailio passes the SDP's own addresses (the phones' LAN addresses, which their
    media does not come from), as a proxy without NAT handling would: the relay holds
    the NAT'ed sources for its learning window, then latches them; two-way audio."""
    stack = make_stack(kamailio_defines=["WITH_SDP_ADDRESS"])
    run = stack.calls(calls=1, pause_ms=3000)
    finish(stack, run)
    check_media(stack, call_ids(run, 1))
    log = relay_log(stack)
    assert len(re.findall(r"session latched: .* RTP to .* \(learning window passed\)", log)) == 2
    assert re.search(rf"session learning: .* is not on the signalled host \({UAC_IP}\)", log)


@pytest.mark.parametrize("both", [False, True], ids=["caller", "record-both"])
def test_start_recording_during_a_call(
    lab: Lab, make_stack: Callable[..., Stack], both: bool
) -> None:
    """Kamailio's start_recording() (R) in the call: the pcap holds the caller's stream
    (both with --record-both), and tshark's RTP analysis finds no loss."""
    stack_dir = lab.workdir / f"recordings-{'both' if both else 'caller'}"
    stack_dir.mkdir()
    stack = make_stack(
        relay_flags=["-r", str(stack_dir), "-P"] + (["--record-both"] if both else []),
        kamailio_defines=["WITH_RECORDING"],
    )
    run = stack.calls(calls=1, pause_ms=3000)
    finish(stack, run)
    (cid,) = call_ids(run, 1)
    check_media(stack, {cid})
    wait_for(lambda: stack.info(0).get("active sessions") == 0, 5, "no active sessions")
    suffix = ".pcap" if both else ".o.rtp"
    files = [p for p in stack_dir.iterdir() if p.name.endswith(suffix)]
    assert len(files) == 1, sorted(p.name for p in stack_dir.iterdir())
    assert files[0].name.startswith(cid.replace("/", "%2F") + "=")
    out = subprocess.run(
        ["tshark", "-r", str(files[0]), "-o", "rtp.heuristic_rtp:TRUE", "-q", "-z", "rtp,streams"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    streams = [line for line in out.stdout.splitlines() if re.search(r"\bg711[UA]\b", line)]
    assert len(streams) == (2 if both else 1), out.stdout
    for line in streams:
        lost = re.search(r"\s(-?\d+) \((-?[\d.]+)%\)", line)
        assert lost is not None and int(lost.group(1)) == 0, line


def test_media_timeout_ends_call(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(ttl=3)
    started = time.monotonic()
    # media for 1.5 s, then silence: the relay times the session out, notifies
    # Kamailio, Kamailio sends BYE to both phones (both scenarios wait for it)
    run = stack.calls(calls=1, uac_scenario="uac_wait_bye.xml", media_ms=1500, timeout=40)
    finish(stack, run, timeout=45)
    elapsed = time.monotonic() - started
    check_media(stack, call_ids(run, 1), min_packets=10)
    g = stack.counters(0, "nsess_created", "nsess_destroyed", "nsess_timeout")
    assert g["nsess_timeout"] >= 1, g
    assert g["nsess_destroyed"] == g["nsess_created"]
    assert stack.kamailio is not None
    log = stack.kamailio.output()
    assert "rtpproxy media timeout notification" in log
    assert "timed out on the relay: ending the dialog" in log
    assert elapsed < 30


def test_call_through_nat_kernel_forwarded(lab: Lab, make_stack: Callable[..., Stack]) -> None:
    """--kernel-forward on a relay that routes: both phones are on other hosts, so the
    kernel forwards their media. -T 3 with a 6 s call: the relay must see the kernel's
    packets, or it would time the call out in the middle."""
    lab.exec_in("pub", "sysctl", "-qw", "net.ipv4.ip_forward=1")  # read at relay start
    try:
        flags = ("--kernel-forward", "--nft-table", "pyrtpproxy")
        run_kernel_forwarded_call(make_stack(ttl=3, relay_flags=flags))
    finally:
        lab.exec_in("pub", "sysctl", "-qw", "net.ipv4.ip_forward=0")


def run_kernel_forwarded_call(stack: Stack) -> None:
    lab = stack.lab
    run = stack.calls(calls=1, pause_ms=6000)

    def forwarded() -> list[int]:
        listing = lab.exec_in("pub", "nft", "list", "set", "inet", "pyrtpproxy", "inbound4")
        return [int(n) for n in re.findall(r"counter packets (\d+)", listing)]

    try:
        # both RTP directions (RTCP is sparse)
        wait_for(lambda: sum(n >= 50 for n in forwarded()) >= 2, 15, "kernel forwarding")
    except TimeoutError:
        relay = stack.relays[0].proc
        log = relay.output()[-3000:] if relay else ""
        pytest.fail(f"kernel counters {forwarded()}; relay log:\n{log}")
    finish(stack, run)
    check_media(stack, call_ids(run, 1), min_packets=200)
    wait_for(lambda: stack.info(0).get("active sessions") == 0, 5, "no active sessions")
    assert forwarded() == []  # the BYE removed the call's map elements
    g = stack.counters(0, "nsess_timeout", "npkts_relayed")
    assert g["nsess_timeout"] == 0, g
    assert g["npkts_relayed"] >= 400, g


def test_twenty_concurrent_calls(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    run = stack.calls(calls=20, rate=20, pause_ms=4000, timeout=60)
    # while the calls are up, all 20 sessions are active on the relay
    wait_for(lambda: stack.info(0).get("active sessions", 0) >= 20, 20, "20 active sessions")
    finish(stack, run)
    check_media(stack, call_ids(run, 20), min_packets=20)
    wait_for(lambda: stack.info(0).get("active sessions") == 0, 5, "no active sessions")
    g = stack.counters(0, "nsess_created", "nsess_destroyed", "nsess_complete")
    assert g["nsess_complete"] == 20
    assert g["nsess_destroyed"] == g["nsess_created"]


def test_failover_between_two_relays(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(relays=2)
    # both relays in one set, weight 1 each: calls spread over both
    run = stack.calls(calls=6, rate=10, pause_ms=1500)
    finish(stack, run)
    check_media(stack, call_ids(run, 6), min_packets=10)
    created = [stack.counters(i, "nsess_created")["nsess_created"] for i in (0, 1)]
    assert sum(created) == 6, created
    assert min(created) >= 1, f"calls not spread over both relays: {created}"
    # relay 1 goes away; Kamailio disables it and later calls go to relay 0
    stack.stop_relay(1)
    before = stack.counters(0, "nsess_created")["nsess_created"]
    run = stack.calls(calls=6, rate=10, pause_ms=1500)
    finish(stack, run)
    check_media(stack, call_ids(run, 6), min_packets=10)
    after = stack.counters(0, "nsess_created")["nsess_created"]
    assert after - before == 6


@pytest.mark.parametrize("how", ["handover", "kill"])
def test_relay_restart_mid_call_keeps_the_call(
    lab: Lab, make_stack: Callable[..., Stack], how: str
) -> None:
    """--state-file: the relay restarts during a call (a planned takeover by a new
    process, or kill -9 and a new start); media goes on and Kamailio's BYE afterwards
    deletes the session on the new relay."""
    stack = make_stack(relay_flags=["--state-file", str(lab.workdir / f"state-{how}.json")])
    relay = stack.relays[0]
    run = stack.calls(calls=1, pause_ms=6000, timeout=40)
    wait_for(lambda: stack.info(0).get("active sessions", 0) == 1, 10, "the call's session")
    time.sleep(1.5)  # media flows
    old = relay.proc
    assert old is not None
    if how == "kill":
        old.popen.kill()
        old.popen.wait(5)
        stack.start_relay(0)
    else:
        relay.proc = stack.lab.spawn("pub", f"{relay.name}-next", stack.relay_args(0))
        assert old.wait(10) == 0, old.output()[-3000:]
    new = relay.proc
    assert new is not None and new.alive()
    assert stack.info(0).get("active sessions") == 1
    finish(stack, run)
    check_media(stack, call_ids(run, 1), min_packets=20)
    wait_for(lambda: stack.info(0).get("active sessions") == 0, 5, "the BYE's delete")
    log = new.output()
    assert "restored 1 sessions from the state file (0 skipped)" in log
    assert re.search(r"session deleted: call-id='1-\d+@", log), log[-3000:]
    assert stack.counters(0, "nsess_timeout")["nsess_timeout"] == 0


def test_prompt_to_the_caller_then_the_call_resumes(
    lab: Lab, make_stack: Callable[..., Stack]
) -> None:
    """WITH_PROMPT: Kamailio's rtpproxy_stream2uac() on the ACK (P1 … session). The
    caller hears the prompt's 10 ms PCMU packets from the relay, with the callee muted,
    then the callee's own 20 ms packets again."""
    prompt = lab.workdir / "welcome"
    Path(f"{prompt}.0").write_bytes(b"\x55" * 8000)  # 1 s: 100 packets of 80 bytes
    stack = make_stack(kamailio_defines=["WITH_PROMPT", f'PROMPT="{prompt}"'])
    run = stack.calls(calls=1, pause_ms=3000)
    finish(stack, run)
    (cid,) = call_ids(run, 1)
    check_media(stack, {cid})
    runs = lab.media_results("uac")[cid]["runs"]
    assert isinstance(runs, list)
    prompt_runs = [i for i, (size, _n) in enumerate(runs) if size == 80]
    assert prompt_runs, f"the caller heard no prompt: {runs}"
    first, last = prompt_runs[0], prompt_runs[-1]
    # muted: nothing but the prompt between its first and its last packet
    assert all(size == 80 for size, _n in runs[first : last + 1]), runs
    heard = sum(n for size, n in runs[first : last + 1])
    # the first ones go to the SDP address before the caller's packets latch its NAT mapping
    assert heard >= 50, runs
    assert runs[-1][0] == 160 and runs[-1][1] >= 20, runs  # the callee's audio resumed
    g = stack.counters(0, "nplrs_created", "nplrs_destroyed", "npkts_played")
    assert g["nplrs_created"] == g["nplrs_destroyed"] == 1, g
    assert g["npkts_played"] == 100, g
    callee_runs = lab.media_results("uas")[cid]["runs"]
    assert isinstance(callee_runs, list)
    assert {size for size, _n in callee_runs} == {160}  # the callee heard no prompt
