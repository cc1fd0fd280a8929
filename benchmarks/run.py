#!/usr/bin/env python3
"""Side-by-side load benchmark of rtpproxy-compatible relays (see benchmarks/README.md).

Example:
    python benchmarks/run.py --relay ref=/path/to/rtpproxy \\
        --relay py=/work/main/.venv/bin/pyrtpproxy --repeat 3 --plot benchmarks/results.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / "build"
OUT_DIR = HERE / "out"
LOADGEN_SRC = HERE / "loadgen.c"
LOADGEN_BIN = BUILD_DIR / "loadgen"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_STEPS = "100,250,500,1000,1500,2000,3000,4000"
UNDERDELIVERED = 0.95  # a step that sent less than this share of its target rate


class Interrupted(Exception):
    """Raised from the SIGTERM/SIGHUP handler so that cleanup runs."""


@dataclass(frozen=True)
class RelaySpec:
    name: str
    command: list[str]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- build


def build_loadgen() -> Path:
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    if LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN_BIN
    cmd = ["gcc", "-O2", "-Wall", "-o", str(LOADGEN_BIN), str(LOADGEN_SRC)]
    log("building: " + shlex.join(cmd))
    subprocess.run(cmd, check=True, timeout=120)
    return LOADGEN_BIN


# --------------------------------------------------------------------------- /proc helpers


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # fields after the parenthesised command name; index 0 is field 3 (state)
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid plus all its descendant processes."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parent[int(entry.name)] = int(fields[1])
    found = [pid]
    for _ in range(16):  # bounded depth
        new = [p for p, pp in parent.items() if pp in found and p not in found]
        if not new:
            break
        found.extend(new)
    return found


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process tree (each process's figure already covers all its threads)."""
    total = 0.0
    for p in descendants(pid):
        fields = _stat_fields(p)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def softirq_thread_seconds() -> float:
    """CPU time of the kernel's softirq threads (ksoftirqd/N), from their schedstat (ns)."""
    total = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if not comm.read_text().startswith("ksoftirqd/"):
                continue
            total += int((comm.parent / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_facts() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_gib": round(mem_kb / 1048576, 1),
        "python": platform.python_version(),
    }


def nofile_limit() -> int:
    """-L value: 65536, or the hard RLIMIT_NOFILE when we may not raise it that far.

    The reference exits with "setrlimit: Operation not permitted" when -L exceeds the
    hard limit and the process lacks CAP_SYS_RESOURCE (as in unprivileged containers).
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 65536
    return min(65536, hard)


def relay_version(spec: RelaySpec) -> str:
    """First line of `COMMAND -V` (both relays print their software version)."""
    try:
        res = subprocess.run([*spec.command, "-V"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    out = (res.stdout or res.stderr).decode(errors="replace").strip().splitlines()
    return out[0] if out else "?"


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


# --------------------------------------------------------------------------- relay process

_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def _kill(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    _STARTED.pop(proc.pid, None)


def kill_all_started() -> None:
    for proc in list(_STARTED.values()):
        _kill(proc, grace=3.0)


def control_query(port: int, cmd: str, timeout: float = 0.3) -> str | None:
    """One cookie-prefixed command over UDP to 127.0.0.1:port; the reply body or None."""
    cookie = f"rb{os.getpid()}x{time.monotonic_ns()}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(f"{cookie} {cmd}".encode(), ("127.0.0.1", port))
            data = s.recv(2048).decode(errors="replace")
        except OSError:
            return None
    if not data.startswith(cookie + " "):
        return None
    return data[len(cookie) + 1 :].strip()


@contextlib.contextmanager
def relay_process(
    spec: RelaySpec,
    ctl_port: int,
    port_lo: int,
    port_hi: int,
    cpu: int | None,
    logfile: Path,
    ready_timeout: float,
    *,
    control: str | None = None,
    probe: Callable[[], str | None] | None = None,
    ipv6: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start one relay with the benchmark's flags; yield it once it answers ``V``; stop it.

    ``control`` replaces the ``-s`` argument (default ``udp:127.0.0.1:<ctl_port>``) and
    ``probe`` the readiness check (one ``V`` sent over that socket; returns the reply).
    ``ipv6`` adds ``-6 ::1`` (media on IPv6). pyrtpproxy runs with
    ``PYRTPPROXY_KERNEL_FORWARD=off`` unless the environment says otherwise: a relay
    uses the kernel path only when its command asks for it (``--kernel-forward``).
    """
    # Not "-p /dev/null": the reference rtpproxy unlink()s its pid file at exit whatever
    # it is (main.c ehandler), so running it as root with -p /dev/null deletes /dev/null.
    pidfile = OUT_DIR / "run" / f"{spec.name}.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    flags = [
        "-f", "-F", "-s", control or f"udp:127.0.0.1:{ctl_port}", "-l", "127.0.0.1",
        "-m", str(port_lo), "-M", str(port_hi), "-T", "60", "-p", str(pidfile),
        "-d", "ERR", "-L", str(nofile_limit()),
    ]  # fmt: skip
    if ipv6:
        flags += ["-6", "::1"]
    argv = [*spec.command, *flags]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("wb") as lf:
        lf.write(("# " + shlex.join(argv) + "\n").encode())
        lf.flush()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal ^C reaches us; we stop it by PID
            env={"PYRTPPROXY_KERNEL_FORWARD": "off", **os.environ},
        )  # fmt: skip
    _STARTED[proc.pid] = proc
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {proc.returncode} (see {logfile})")
            answer = probe() if probe is not None else control_query(ctl_port, "V")
            if answer == "20040107":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name} did not answer V within {ready_timeout}s")
            time.sleep(0.1)
        yield proc
    finally:
        _kill(proc)


# --------------------------------------------------------------------------- one step


def run_step(
    args: argparse.Namespace,
    loadgen: Path,
    spec: RelaySpec,
    rep: int,
    sessions: int,
    port_lo: int,
    port_hi: int,
) -> dict[str, Any]:
    rec: dict[str, Any] = {"relay": spec.name, "rep": rep, "sessions": sessions}
    logfile = OUT_DIR / "logs" / f"{spec.name}-r{rep}-n{sessions}.log"
    relay_cpu = None if args.no_pin else args.relay_cpu
    gen_cpu = None if args.no_pin else args.gen_cpu
    try:
        with relay_process(
            spec, args.ctl_port, port_lo, port_hi, relay_cpu, logfile, args.ready_timeout,
            ipv6=args.ipv6,
        ) as proc:  # fmt: skip
            cpu0 = cpu_seconds(proc.pid)
            tag = f"bn{rep}x{sessions}x{os.getpid()}"
            recorder = start_recording_share(args, tag, sessions, rec)
            argv = [
                str(loadgen), "--ctl", f"127.0.0.1:{args.ctl_port}", "--tag", tag,
                "--sessions", str(sessions), "--duration", str(args.step_seconds),
                "--warmup", str(args.warmup), "--drain", str(args.drain),
                "--rate", str(args.rate), "--relay-pid", str(proc.pid),
                "--setup-timeout", str(args.setup_timeout), "--tick-us", str(args.tick_us),
                "--shared", str(args.gen_shared), *(["--ipv6"] if args.ipv6 else []),
            ]  # fmt: skip
            if gen_cpu is not None:
                argv = ["taskset", "-c", str(gen_cpu), *argv]
            limit = 2 * args.setup_timeout + args.step_seconds + args.drain + 30
            t0 = time.monotonic()
            softirq0 = softirq_thread_seconds()
            res = subprocess.run(argv, capture_output=True, timeout=limit, check=False)
            if recorder is not None:
                recorder.join(5.0)
            rec["step_wall_s"] = round(time.monotonic() - t0, 3)
            rec["ksoftirqd_step_s"] = round(softirq_thread_seconds() - softirq0, 4)
            rec["relay_cpu_step_s"] = round(cpu_seconds(proc.pid) - cpu0, 3)
            rec["relay_rss_kb"] = rss_kb(proc.pid)
            rec["relay_alive"] = proc.poll() is None
            lines = [ln for ln in res.stdout.decode().splitlines() if ln.startswith("{")]
            if res.returncode != 0 or not lines:
                err = res.stderr.decode(errors="replace")[-500:]
                rec["error"] = f"loadgen rc={res.returncode}: {err}"
            if lines:
                rec["lg"] = json.loads(lines[-1])
    except subprocess.TimeoutExpired:
        rec["error"] = "loadgen timed out"
    except RuntimeError as exc:
        rec["error"] = str(exc)
    classify(args, rec)
    return rec


def start_recording_share(
    args: argparse.Namespace, tag: str, sessions: int, rec: dict[str, Any]
) -> threading.Thread | None:
    """With ``--record-share F``: once the generator's sessions are set up, send ``R``
    for every 1/F-th of them (a relay started without ``-r`` answers E50 and records
    nothing), so a relay with ``-r`` records that share of the calls' caller media."""
    share = args.record_share
    if share <= 0:
        return None
    every = max(1, round(1 / share))
    chosen = range(0, sessions, every)

    def record() -> None:
        deadline = time.monotonic() + args.setup_timeout + 5
        while time.monotonic() < deadline:
            reply = control_query(args.ctl_port, f"Q {tag}-{chosen[-1]} ft{chosen[-1]}")
            if reply is not None and not reply.startswith("E"):
                break
            time.sleep(0.05)
        ok = sum(control_query(args.ctl_port, f"R {tag}-{i} ft{i}") == "0" for i in chosen)
        rec["recorded_sessions"] = ok

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def classify(args: argparse.Namespace, rec: dict[str, Any]) -> None:
    lg = rec.get("lg")
    if not lg or "lat_us" not in lg:
        rec["ok"] = False
        rec["why"] = rec.get("error", "no result")
        rec["generator_bound"] = False
        rec["disturbed"] = False
        return
    why = []
    if lg["setup_failures"]:
        why.append(f"{lg['setup_failures']} setup failures")
    if lg["loss_pct_total"] > args.max_loss:
        why.append(f"loss {lg['loss_pct_total']:.3f}%")
    p99 = lg["lat_us"]["p99"]
    if p99 < 0 or p99 > args.max_p99_ms * 1000:
        why.append(f"p99 {p99 / 1000:.1f}ms")
    if lg["bad"]:
        why.append(f"{lg['bad']} misrouted")
    if not rec.get("relay_alive", True):
        why.append("relay died")
    if "error" in rec:
        why.append(rec["error"][:80])
    rec["ok"] = not why
    rec["why"] = "; ".join(why)
    late = lg["late_sends"] / max(1, lg["sent_all"])
    rec["late_frac"] = round(late, 5)
    window = lg["window_s"] or 1.0
    rec["foreign_pct"] = round(100 * max(0.0, lg.get("foreign_user_s", 0.0)) / window, 1)
    rec["disturbed"] = rec["foreign_pct"] > args.max_foreign
    # late sends alone are not proof of a saturated generator: on VMs both cores see
    # multi-ms stalls even when idle, so only the generator's CPU share decides
    rec["generator_bound"] = lg["gen_cpu_util"] >= args.gen_bound
    # a saturated generator that no longer sends the target rate has not tested the relay
    # at this step: capacity stops below it (as a lower bound), whatever loss and latency say
    rec["underdelivered"] = lg["sent_pps"] < UNDERDELIVERED * lg["target_pps"]


# --------------------------------------------------------------------------- summaries


def metric(rec: dict[str, Any], key: str) -> float | None:
    lg = rec.get("lg")
    if not lg or "lat_us" not in lg:
        return None
    value: Any
    if key == "p50_ms":
        value = lg["lat_us"]["p50"] / 1000
    elif key == "p99_ms":
        value = lg["lat_us"]["p99"] / 1000
    elif key == "max_ms":
        value = lg["lat_us"]["max"] / 1000
    elif key == "loss_pct":
        value = lg["loss_pct_total"]
    elif key == "relay_cpu_pct":
        value = 100 * lg.get("relay_cpu_util", 0)
    elif key == "us_per_pkt":
        value = lg.get("relay_us_per_pkt")
    elif key == "sys_us_per_pkt":
        # relay + generator + the kernel's softirq threads: what in-kernel forwarding moves
        # out of the relay process is still counted. Process times are exact (scheduler
        # clock; loopback softirq work runs in the sending task and is charged to it);
        # /proc/stat's tick-sampled busy times are not used, they are far off on this VM.
        # ksoftirqd is measured over the whole step, so this errs on the high side.
        relayed = sum(lg["recv"])
        spent = lg.get("relay_sched_cpu_s") or lg.get("relay_cpu_s") or 0.0
        spent += lg["gen_cpu_s"] + rec.get("ksoftirqd_step_s", 0.0)
        value = 1e6 * spent / relayed if relayed else None
    elif key == "gen_cpu_pct":
        value = 100 * lg["gen_cpu_util"]
    elif key == "foreign_pct":
        value = rec.get("foreign_pct")
    elif key == "late_pct":
        value = 100 * lg["late_sends"] / max(1, lg["sent_all"])
    elif key == "relayed_pps":
        value = sum(lg["recv"]) / lg["window_s"] if lg["window_s"] else 0
    else:
        raise KeyError(key)
    return None if value is None else float(value)


METRICS = ["loss_pct", "p50_ms", "p99_ms", "max_ms", "relay_cpu_pct", "us_per_pkt",
           "sys_us_per_pkt", "gen_cpu_pct", "late_pct", "foreign_pct", "relayed_pps"]  # fmt: skip


def plot_title(machine: dict[str, Any]) -> str:
    """The plot's heading, from ``machine_facts()``."""
    return f"rtpproxy-compatible relays on {machine['cpus']} CPUs"


def summarise(
    results: list[dict[str, Any]],
    relays: list[RelaySpec],
    steps: list[int],
    repeat: int,
    versions: dict[str, str],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in relays:
        rows: dict[int, dict[str, Any]] = {}
        for n in steps:
            recs = [r for r in results if r["relay"] == spec.name and r["sessions"] == n]
            if not recs:
                continue
            row: dict[str, Any] = {"runs": len(recs), "ok_runs": sum(bool(r["ok"]) for r in recs)}
            for m in METRICS:
                vals = [v for v in (metric(r, m) for r in recs) if v is not None]
                row[m] = statistics.median(vals) if vals else None
            row["generator_bound_runs"] = sum(bool(r["generator_bound"]) for r in recs)
            row["underdelivered_runs"] = sum(bool(r.get("underdelivered")) for r in recs)
            row["disturbed_runs"] = sum(bool(r.get("disturbed")) for r in recs)
            row["why"] = sorted({r["why"] for r in recs if r["why"]})
            rows[n] = row
        caps: list[int] = []
        capped: list[bool] = []
        gen_limited: list[bool] = []
        for rep in range(repeat):
            recs = sorted(
                (r for r in results if r["relay"] == spec.name and r["rep"] == rep),
                key=lambda r: int(r["sessions"]),
            )
            if not recs:
                continue
            cap, hit_limit, gen = 0, False, False
            for r in recs:
                gen = gen or bool(r["generator_bound"])
                if r.get("underdelivered"):
                    break  # the generator's limit, not the relay's
                if not r["ok"]:
                    hit_limit = True
                    break
                cap = int(r["sessions"])
            caps.append(cap)
            capped.append(not hit_limit)
            gen_limited.append(gen)
        out[spec.name] = {
            "command": shlex.join(spec.command),
            "steps": rows,
            "capacity_per_rep": caps,
            "capacity_median": statistics.median(caps) if caps else None,
            "capacity_is_lower_bound": any(capped),
            "generator_bound_before_limit": any(gen_limited),
            "version": versions.get(spec.name, "?"),
        }
    return out


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_tables(summary: dict[str, Any], relays: list[RelaySpec], baseline: str) -> None:
    cols = [("loss%", "loss_pct", ".3f"), ("p50ms", "p50_ms", ".2f"), ("p99ms", "p99_ms", ".2f"),
            ("maxms", "max_ms", ".1f"), ("cpu%", "relay_cpu_pct", ".1f"),
            ("us/pkt", "us_per_pkt", ".2f"), ("sys us", "sys_us_per_pkt", ".2f"),
            ("kpps", "relayed_pps", ".1f"),
            ("gen%", "gen_cpu_pct", ".0f"), ("late%", "late_pct", ".1f"),
            ("other%", "foreign_pct", ".0f")]  # fmt: skip
    for spec in relays:
        s = summary[spec.name]
        print(f"\n== {spec.name}: {s['command']}  [{s.get('version', '?')}]")
        print(f"{'sessions':>8} " + " ".join(f"{c[0]:>8}" for c in cols) + "  flags")
        for n, row in sorted(s["steps"].items()):
            vals = []
            for _, key, f in cols:
                v = row[key]
                if key == "relayed_pps" and v is not None:
                    v = v / 1000
                vals.append(f"{fmt(v, f):>8}")
            flags = []
            if row["ok_runs"] < row["runs"]:
                flags.append(f"FAIL {row['runs'] - row['ok_runs']}/{row['runs']}")
            if row["generator_bound_runs"]:
                flags.append(f"generator-bound {row['generator_bound_runs']}/{row['runs']}")
            if row.get("underdelivered_runs"):
                flags.append(f"load not reached {row['underdelivered_runs']}/{row['runs']}")
            if row["disturbed_runs"]:
                flags.append(f"disturbed {row['disturbed_runs']}/{row['runs']}")
            if row["why"]:
                flags.append("(" + " | ".join(row["why"])[:100] + ")")
            print(f"{n:>8} " + " ".join(vals) + "  " + " ".join(flags))
        cap = "-" if s["capacity_median"] is None else f"{s['capacity_median']:g}"
        note = " (no failing step reached: lower bound)" if s["capacity_is_lower_bound"] else ""
        gen = " [generator was saturated at or before the limit]" if s[
            "generator_bound_before_limit"] else ""  # fmt: skip
        print(f"capacity: {cap} sessions (per repeat: {s['capacity_per_rep']}){note}{gen}")
    others = [r for r in relays if r.name != baseline]
    if baseline not in summary or not others:
        return
    base = summary[baseline]["steps"]
    print(f"\n== ratios vs {baseline} (>1 means more CPU / higher latency than {baseline})")
    print("   us/pkt: the relay process's CPU per relayed packet; sys: the whole machine's")
    ratio_keys = ("us_per_pkt", "sys_us_per_pkt", "relay_cpu_pct", "p99_ms")
    hdr = f"{'sessions':>8}"
    for o in others:
        hdr += "".join(f" {o.name + ' ' + k:>12}" for k in ("us/pkt", "sys", "cpu", "p99"))
    print(hdr)
    for n in sorted(base):
        line = f"{n:>8}"
        for o in others:
            row = summary[o.name]["steps"].get(n)
            for key in ratio_keys:
                a = row.get(key) if row else None
                b = base[n].get(key)
                line += f" {f'{a / b:.2f}x' if a is not None and b else '-':>12}"
        print(line)
    caps = ", ".join(
        f"{r.name}={summary[r.name]['capacity_median']:g}"
        if summary[r.name]["capacity_median"] is not None
        else f"{r.name}=-"
        for r in relays
    )
    print(f"capacity (median sessions): {caps}")


def plot(summary: dict[str, Any], relays: list[RelaySpec], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 4, figsize=(21, 5))
    panels = [("p99_ms", "one-way latency p99 (ms)", True),
              ("relay_cpu_pct", "relay CPU (% of one core)", False),
              ("us_per_pkt", "relay CPU per relayed packet (us)", False),
              ("sys_us_per_pkt", "whole-machine CPU per relayed packet (us)", False)]  # fmt: skip
    for ax, (key, label, logy) in zip(axes, panels, strict=True):
        for spec in relays:
            steps = summary[spec.name]["steps"]
            xs = [n for n in sorted(steps) if steps[n][key] is not None]
            ys = [steps[n][key] for n in xs]
            (line,) = ax.plot(xs, ys, marker="o", label=spec.name)
            gx = [n for n in xs if steps[n]["generator_bound_runs"]]
            gy = [steps[n][key] for n in gx]
            if gx:
                ax.plot(gx, gy, "x", color=line.get_color(), markersize=12, mew=2)
        ax.set_xlabel("concurrent sessions (2 RTP streams each, 50 pps per stream)")
        ax.set_ylabel(label)
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title + "   (x = generator-bound step)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"plot written to {path}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="relay to measure (repeatable); COMMAND gets rtpproxy flags appended",
    )
    p.add_argument(
        "--sessions",
        default=DEFAULT_STEPS,
        help=f"comma-separated session counts to ramp through (default {DEFAULT_STEPS})",
    )
    p.add_argument(
        "--step-seconds",
        type=float,
        default=10.0,
        help="media time per step including warm-up (default 10)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds at the start of a step not measured (default 2)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=1.0,
        help="seconds to wait for stragglers after sending stops (default 1)",
    )
    p.add_argument("--rate", type=float, default=50.0, help="packets/s per direction (default 50)")
    p.add_argument(
        "--tick-us",
        type=float,
        default=1000.0,
        help="generator send granularity in microseconds (default 1000)",
    )
    p.add_argument(
        "--gen-shared",
        type=int,
        default=0,
        metavar="K",
        help="generator uses 2K sockets shared by all sessions (cheaper, batched with "
        "sendmmsg) instead of 2 per session (default 0 = 2 per session)",
    )
    p.add_argument("--repeat", type=int, default=1, help="repeat the whole ramp K times")
    p.add_argument(
        "--baseline", help="relay NAME used as the denominator of ratios (default: first --relay)"
    )
    p.add_argument("--max-loss", type=float, default=0.1, help="capacity limit: loss %% (0.1)")
    p.add_argument("--max-p99-ms", type=float, default=20.0, help="capacity limit: p99 ms (20)")
    p.add_argument(
        "--gen-bound",
        type=float,
        default=0.9,
        help="generator CPU share above which a step is generator-bound (0.9)",
    )
    p.add_argument(
        "--fails-to-stop",
        type=int,
        default=1,
        help="stop a ramp after this many failing steps (default 1)",
    )
    p.add_argument("--ctl-port", type=int, default=9400, help="relay UDP control port (9400)")
    p.add_argument("--port-min", type=int, default=10000, help="relay media port range start")
    p.add_argument("--relay-cpu", type=int, default=0, help="CPU the relay is pinned to (0)")
    p.add_argument("--gen-cpu", type=int, default=1, help="CPU the generator is pinned to (1)")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument(
        "--setup-timeout",
        type=float,
        default=60.0,
        help="seconds allowed for creating (and deleting) a step's sessions",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=20.0,
        help="seconds a relay may take to answer V after start",
    )
    p.add_argument(
        "--max-wall",
        type=float,
        default=3 * 3600.0,
        help="global wall-clock cap in seconds (default 3 h)",
    )
    p.add_argument(
        "--max-foreign",
        type=float,
        default=10.0,
        help="a step is 'disturbed' when other processes used more than this %% of a core "
        "(user time) during its window (default 10)",
    )
    p.add_argument(
        "--retry-disturbed",
        type=int,
        default=2,
        help="re-run a disturbed step up to N times, keeping the least disturbed (default 2)",
    )
    p.add_argument("--pause", type=float, default=1.0, help="seconds between steps (1)")
    p.add_argument(
        "--record-share",
        type=float,
        default=0.0,
        help="after set-up, send R for this share of the sessions (0.1: every 10th); "
        "relays given -r DIR record them, others answer E50",
    )
    p.add_argument(
        "--ipv6",
        action="store_true",
        help="media over IPv6: relays get -6 ::1 and the parties sit on ::1 (control stays "
        "on 127.0.0.1; not with --gen-shared)",
    )
    p.add_argument(
        "--netns",
        action="store_true",
        help="run everything in a private network namespace (root; needed for relays that\n"
        "change nftables, such as pyrtpproxy --kernel-forward)",
    )
    p.add_argument("--plot", type=Path, help="write a PNG plot here")
    p.add_argument("--out", type=Path, help="raw JSON output (default benchmarks/out/...)")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS",
        help="only print the tables (and --plot) again from a raw results file",
    )
    args = p.parse_args(argv)
    if not args.relay and not args.from_json:
        p.error("--relay is required")
    if args.repeat < 1 or args.repeat > 50:
        p.error("--repeat must be 1..50")
    if args.ipv6 and args.gen_shared:
        p.error("--ipv6 does not work with --gen-shared")
    return args


def parse_relays(items: list[str]) -> list[RelaySpec]:
    relays: list[RelaySpec] = []
    for item in items:
        name, sep, cmd = item.partition("=")
        if not sep or not name or not cmd.strip():
            raise SystemExit(f"--relay expects NAME=COMMAND, got {item!r}")
        if any(r.name == name for r in relays):
            raise SystemExit(f"duplicate relay name {name!r}")
        relays.append(RelaySpec(name, shlex.split(cmd)))
    return relays


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def in_private_namespace(argv: list[str]) -> int:
    """Run this script again inside a fresh namespace with only loopback; delete it after."""
    name = f"pyrtpbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        inner = [a for a in argv if a != "--netns"]
        cmd = ["ip", "netns", "exec", name, sys.executable, str(Path(__file__).resolve()), *inner]
        return subprocess.run(cmd, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def report_again(args: argparse.Namespace) -> int:
    """Summarise a raw results file again (with this version's classification)."""
    doc = json.loads(args.from_json.read_text())
    meta = doc["meta"]
    relays = [RelaySpec(name, shlex.split(cmd)) for name, cmd in meta["relays"].items()]
    results = doc["results"]
    for rec in results:
        classify(args, rec)
    repeat = 1 + max(int(r["rep"]) for r in results)
    summary = summarise(results, relays, meta["steps"], repeat, meta["versions"])
    print_tables(summary, relays, args.baseline or relays[0].name)
    if args.plot:
        plot(summary, relays, args.plot, plot_title(meta["machine"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return report_again(args)
    if args.netns:
        return in_private_namespace(sys.argv[1:] if argv is None else argv)
    relays = parse_relays(args.relay)
    baseline = args.baseline or relays[0].name
    steps = sorted({int(x) for x in args.sessions.split(",") if x.strip()})
    if not steps or steps[0] < 1:
        raise SystemExit("--sessions needs positive integers")
    if not args.no_pin and (os.cpu_count() or 1) < 2:
        log("fewer than 2 CPUs: not pinning (--no-pin)")
        args.no_pin = True

    # media port range: 2 legs x (RTP+RTCP) per session, kept below the ephemeral range
    # that the generator's own sockets use
    eph_lo, eph_hi = ephemeral_range()
    port_lo = args.port_min + (args.port_min % 2)
    port_hi = port_lo + 4 * steps[-1] + 2000
    if port_hi >= eph_lo and port_lo <= eph_hi:
        raise SystemExit(
            f"relay port range {port_lo}-{port_hi} overlaps the ephemeral range {eph_lo}-{eph_hi};"
            " lower --port-min or the largest --sessions step"
        )
    if port_hi > 65535 or port_lo <= args.ctl_port <= port_hi:
        raise SystemExit(f"bad port layout: media {port_lo}-{port_hi}, control {args.ctl_port}")

    loadgen = build_loadgen()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path: Path = args.out or OUT_DIR / f"results-{stamp}.json"
    facts = machine_facts()
    versions = {r.name: relay_version(r) for r in relays}
    meta = {
        "started": stamp, "machine": facts, "argv": sys.argv,
        "relays": {r.name: shlex.join(r.command) for r in relays},
        "versions": versions,
        "steps": steps, "port_range": [port_lo, port_hi], "relay_L": nofile_limit(),
        "media_family": "ipv6" if args.ipv6 else "ipv4",
        "pinning": None if args.no_pin else {"relay": args.relay_cpu, "generator": args.gen_cpu},
    }  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    # a background job may inherit SIGINT ignored; make ^C / kill -INT always stop us cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)

    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.max_wall
    interrupted = False
    try:
        for rep in range(args.repeat):
            # alternate the order so slow drift of the machine does not favour one relay
            order = relays if rep % 2 == 0 else list(reversed(relays))
            for spec in order:
                fails = 0
                for n in steps:
                    if time.monotonic() > deadline:
                        log("global wall-clock cap reached; stopping")
                        raise Interrupted("max-wall")
                    rec = run_step(args, loadgen, spec, rep, n, port_lo, port_hi)
                    for attempt in range(args.retry_disturbed):
                        if not rec.get("disturbed") or time.monotonic() > deadline:
                            break
                        log(
                            f"{spec.name} n={n}: other processes used {rec['foreign_pct']}% of a"
                            f" core during the step; retrying ({attempt + 1})"
                        )
                        time.sleep(args.pause * 3)
                        again = run_step(args, loadgen, spec, rep, n, port_lo, port_hi)
                        again["retries"] = attempt + 1
                        if again.get("foreign_pct", 1e9) <= rec.get("foreign_pct", 1e9):
                            rec = again
                    results.append(rec)
                    lg = rec.get("lg") or {}
                    lat = lg.get("lat_us") or {}
                    log(
                        f"rep {rep} {spec.name:>6} n={n:<5} ok={rec['ok']!s:<5} "
                        f"loss={lg.get('loss_pct_total', '-')}% p99={lat.get('p99', '-')}us "
                        f"us/pkt={lg.get('relay_us_per_pkt', '-')} "
                        f"relay={lg.get('relay_cpu_util', '-')} gen={lg.get('gen_cpu_util', '-')}"
                        + (" GENERATOR-BOUND" if rec["generator_bound"] else "")
                        + (f" DISTURBED({rec['foreign_pct']}%)" if rec.get("disturbed") else "")
                        + (f" [{rec['why']}]" if rec["why"] else "")
                    )
                    if not rec["ok"]:
                        fails += 1
                        if fails >= args.fails_to_stop:
                            break
                    time.sleep(args.pause)
    except (KeyboardInterrupt, Interrupted) as exc:
        interrupted = True
        log(f"interrupted ({exc!r}); writing partial results")
    finally:
        kill_all_started()

    summary = summarise(results, relays, steps, args.repeat, versions)
    doc = {"meta": meta, "interrupted": interrupted, "results": results, "summary": summary}
    out_path.write_text(json.dumps(doc, indent=1, default=str))
    print(
        f"machine: {facts['cpus']} x {facts['cpu_model']}, kernel {facts['kernel']}, "
        f"{facts['mem_gib']} GiB; relay on CPU {args.relay_cpu}, generator on CPU {args.gen_cpu}"
        f"{' (not pinned)' if args.no_pin else ''}; {args.step_seconds:g}s per step "
        f"({args.warmup:g}s warm-up), {args.rate:g} pps per direction, repeat {args.repeat}"
    )
    print_tables(summary, relays, baseline)
    print(f"\nraw results: {out_path}")
    if args.plot:
        plot(summary, relays, args.plot, plot_title(facts))
    return 130 if interrupted else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all_started()
