#!/usr/bin/env python3
"""Side-by-side benchmark of rtpproxy-compatible relays (see benchmarks/README.md).

Modes (``--mode``, comma-separated, one run): ``media`` (RTP through the relay at rising
session counts), ``control`` (U+L+D triples over the control socket, benchmarks/control.py)
and ``memory`` (what 1000 idle sessions cost, benchmarks/memory.py).

Example:
    python benchmarks/run.py --relay ref=/path/to/rtpproxy --relay rte=/usr/bin/rtpengine \\
        --relay py=/work/main/.venv/bin/pyrtpproxy --mode control,memory,media --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import memory
from relays import (
    OUT_DIR,
    Interrupted,
    RelaySpec,
    _on_signal,
    add_common_options,
    build_loadgen,
    control_query,
    cpu_seconds,
    ephemeral_range,
    kill_all_started,
    loadgen_argv,
    log,
    machine_facts,
    nofile_limit,
    parse_relays,
    relay_group,
    rounds,
    rss_kb,
    softirq_thread_seconds,
)

import control

MODES = ("media", "control", "memory")
DEFAULT_STEPS = "100,250,500,1000,1500,2000,3000,4000"
UNDERDELIVERED = 0.95  # a step that sent less than this share of its target rate


# --------------------------------------------------------------------------- build


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
    rec["instances"] = spec.instances
    try:
        with relay_group(spec, args, port_lo, port_hi, f"{spec.name}-r{rep}-n{sessions}") as group:
            pids = [member.proc.pid for member in group]
            cpu0 = sum(cpu_seconds(pid) for pid in pids)
            tag = f"bn{rep}x{sessions}x{os.getpid()}"
            recorder = start_recording_share(args, tag, sessions, rec)
            members = [(member.ctl_port, member.proc.pid) for member in group]
            argv = loadgen_argv(args, loadgen, spec, tag, sessions, args.step_seconds, members)
            limit = 2 * args.setup_timeout + args.step_seconds + args.drain + 30
            t0 = time.monotonic()
            softirq0 = softirq_thread_seconds()
            res = subprocess.run(argv, capture_output=True, timeout=limit, check=False)
            if recorder is not None:
                recorder.join(5.0)
            rec["step_wall_s"] = round(time.monotonic() - t0, 3)
            rec["ksoftirqd_step_s"] = round(softirq_thread_seconds() - softirq0, 4)
            rec["relay_cpu_step_s"] = round(sum(cpu_seconds(pid) for pid in pids) - cpu0, 3)
            rec["relay_rss_kb"] = sum(rss_kb(pid) or 0 for pid in pids)
            rec["relay_alive"] = all(member.proc.poll() is None for member in group)
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


def add_media_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("media mode")
    g.add_argument(
        "--sessions",
        default=DEFAULT_STEPS,
        help=f"comma-separated session counts to ramp through (default {DEFAULT_STEPS})",
    )
    g.add_argument(
        "--instances",
        default="1",
        help="comma-separated relay instance counts: N relays of each --relay side by side\n"
        "(disjoint ports, control ports --ctl-port+i), the generator's sessions spread\n"
        "over them by call-id as Kamailio's rtpproxy module does (default 1)",
    )
    g.add_argument(
        "--step-seconds",
        type=float,
        default=10.0,
        help="media time per step including warm-up (default 10)",
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds at the start of a step not measured (default 2)",
    )
    g.add_argument(
        "--drain",
        type=float,
        default=1.0,
        help="seconds to wait for stragglers after sending stops (default 1)",
    )
    g.add_argument("--rate", type=float, default=50.0, help="packets/s per direction (default 50)")
    g.add_argument(
        "--tick-us",
        type=float,
        default=1000.0,
        help="generator send granularity in microseconds (default 1000)",
    )
    g.add_argument(
        "--gen-shared",
        type=int,
        default=0,
        metavar="K",
        help="generator uses 2K sockets shared by all sessions (cheaper, batched with "
        "sendmmsg) instead of 2 per session (default 0 = 2 per session)",
    )
    g.add_argument(
        "--ipv6",
        action="store_true",
        help="media over IPv6: relays put it on ::1 (rtpproxy -6 v6@::1, rtpengine a\n"
        "second --interface=::1) and the parties sit on ::1, U6/L6 (control stays on\n"
        "127.0.0.1; not with --gen-shared)",
    )
    g.add_argument("--max-loss", type=float, default=0.1, help="capacity limit: loss %% (0.1)")
    g.add_argument("--max-p99-ms", type=float, default=20.0, help="capacity limit: p99 ms (20)")
    g.add_argument(
        "--gen-bound",
        type=float,
        default=0.9,
        help="generator CPU share above which a step is generator-bound (0.9)",
    )
    g.add_argument(
        "--fails-to-stop",
        type=int,
        default=1,
        help="stop a ramp after this many failing steps (default 1)",
    )
    g.add_argument(
        "--setup-timeout",
        type=float,
        default=60.0,
        help="seconds allowed for creating (and deleting) a step's sessions",
    )
    g.add_argument(
        "--max-foreign",
        type=float,
        default=10.0,
        help="a step is 'disturbed' when other processes used more than this %% of a core "
        "(user time) during its window (default 10)",
    )
    g.add_argument(
        "--retry-disturbed",
        type=int,
        default=2,
        help="re-run a disturbed step up to N times, keeping the least disturbed (default 2)",
    )
    g.add_argument(
        "--record-share",
        type=float,
        default=0.0,
        help="after set-up, send R for this share of the sessions (0.1: every 10th); "
        "relays given -r DIR record them, others answer E50",
    )
    g.add_argument("--plot", type=Path, help="write a PNG plot here")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--mode",
        default="media",
        help=f"comma-separated modes to run, in this order: {','.join(MODES)} (default media)",
    )
    add_common_options(p)
    p.add_argument(
        "--max-wall",
        type=float,
        default=3 * 3600.0,
        help="global wall-clock cap in seconds (default 3 h)",
    )
    p.add_argument(
        "--netns",
        action="store_true",
        help="run everything in a private network namespace (root; needed for relays that\n"
        "change nftables, such as pyrtpproxy --kernel-forward)",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="RESULTS",
        help="only print the tables (and --plot) again from a raw results file",
    )
    add_media_options(p)
    control.add_options(p)
    memory.add_options(p)
    args = p.parse_args(argv)
    if not args.relay and not args.from_json:
        p.error("--relay is required")
    if args.repeat < 1 or args.repeat > 50:
        p.error("--repeat must be 1..50")
    args.modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--mode takes a comma-separated subset of {','.join(MODES)}")
    try:
        args.instance_counts = sorted({int(n) for n in args.instances.split(",") if n.strip()})
    except ValueError:
        p.error("--instances takes comma-separated integers")
    if not args.instance_counts or not all(1 <= n <= 16 for n in args.instance_counts):
        p.error("--instances takes integers 1..16")
    if args.ipv6 and args.gen_shared:
        p.error("--ipv6 does not work with --gen-shared (the shared sockets are IPv4)")
    if args.ipv6 and "media" not in args.modes:
        p.error("--ipv6 moves the media of --mode media only")
    if args.record_share > 0 and args.instance_counts != [1]:
        p.error("--record-share talks to one relay: use it with --instances 1")
    control.check_options(p, args)
    return args


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


def media_relays(doc: dict[str, Any]) -> list[RelaySpec]:
    return [
        RelaySpec(name, shlex.split(cmd), int(doc["instances"].get(name, 1)))
        for name, cmd in doc["relays"].items()
    ]


def report_media(args: argparse.Namespace, meta: dict[str, Any], media: dict[str, Any]) -> None:
    """Summarise a media section again (with this version's classification)."""
    relays = media_relays(media)
    results = media["results"]
    for rec in results:
        classify(args, rec)
    repeat = 1 + max(int(r["rep"]) for r in results)
    summary = summarise(results, relays, media["steps"], repeat, meta["versions"])
    print_tables(summary, relays, args.baseline or relays[0].name)
    if args.plot:
        plot(summary, relays, args.plot, plot_title(meta["machine"]))


def report_again(args: argparse.Namespace) -> int:
    """Print the tables of a raw results file again."""
    doc = json.loads(args.from_json.read_text())
    meta = doc["meta"]
    baseline = args.baseline or next(iter(meta["relays"]))
    if "control" in doc:
        control.print_tables(doc["control"]["summary"], baseline)
    if "memory" in doc:
        memory.print_table(doc["memory"]["summary"])
    if "media" in doc:
        report_media(args, meta, doc["media"])
    return 0


def media_ports(args: argparse.Namespace, steps: list[int]) -> tuple[int, int]:
    """The media port range: from --port-min up to just below the ephemeral range that the
    generator's own sockets use; each of N instances gets 1/N of it, which must hold
    2 legs x (RTP+RTCP) for every session of the largest step, and then some."""
    eph_lo, eph_hi = ephemeral_range()
    port_lo = args.port_min + (args.port_min % 2)
    port_hi = eph_lo - 2 if port_lo < eph_lo else min(65534, port_lo + 30000)
    need = 4 * steps[-1] + 2000
    if (port_hi - port_lo) // max(args.instance_counts) < need:
        raise SystemExit(
            f"relay port range {port_lo}-{port_hi} (below the ephemeral range {eph_lo}-{eph_hi})"
            f" is too small for {max(args.instance_counts)} instances of {need} ports;"
            " lower --port-min or the largest --sessions step"
        )
    ctl_hi = args.ctl_port + max(args.instance_counts)
    if port_lo <= ctl_hi and args.ctl_port <= port_hi:
        raise SystemExit(f"bad port layout: media {port_lo}-{port_hi}, control {args.ctl_port}")
    return port_lo, port_hi


def run_media(args: argparse.Namespace, relays: list[RelaySpec], deadline: float) -> dict[str, Any]:
    """The media ramp of every relay, --repeat times; the raw records and the summary."""
    steps = sorted({int(x) for x in args.sessions.split(",") if x.strip()})
    if not steps or steps[0] < 1:
        raise SystemExit("--sessions needs positive integers")
    port_lo, port_hi = media_ports(args, steps)
    loadgen = build_loadgen()
    section: dict[str, Any] = {
        "relays": {r.name: shlex.join(r.command) for r in relays},
        "instances": {r.name: r.instances for r in relays},
        "steps": steps, "port_range": [port_lo, port_hi], "relay_L": nofile_limit(),
        "media_family": "ipv6" if args.ipv6 else "ipv4",
        "results": [],
    }  # fmt: skip
    results: list[dict[str, Any]] = section["results"]
    try:
        for rep, order in rounds(relays, args.repeat):
            for spec in order:
                ramp(args, loadgen, spec, rep, steps, (port_lo, port_hi), deadline, results)
    finally:
        section["summary"] = summarise(
            results, relays, steps, args.repeat, {r.name: r.version() for r in relays}
        )
    return section


def ramp(
    args: argparse.Namespace,
    loadgen: Path,
    spec: RelaySpec,
    rep: int,
    steps: list[int],
    ports: tuple[int, int],
    deadline: float,
    results: list[dict[str, Any]],
) -> None:
    fails = 0
    for n in steps:
        if time.monotonic() > deadline:
            log("global wall-clock cap reached; stopping")
            raise Interrupted("max-wall")
        rec = run_step(args, loadgen, spec, rep, n, *ports)
        for attempt in range(args.retry_disturbed):
            if not rec.get("disturbed") or time.monotonic() > deadline:
                break
            log(
                f"{spec.name} n={n}: other processes used {rec['foreign_pct']}% of a"
                f" core during the step; retrying ({attempt + 1})"
            )
            time.sleep(args.pause * 3)
            again = run_step(args, loadgen, spec, rep, n, *ports)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return report_again(args)
    if args.netns:
        return in_private_namespace(sys.argv[1:] if argv is None else argv)
    media_specs = parse_relays(args.relay, args.instance_counts)
    single = parse_relays(args.relay)  # control and memory run one instance of each
    baseline = args.baseline or single[0].name
    if not args.no_pin and (os.cpu_count() or 1) < 2:
        log("fewer than 2 CPUs: not pinning (--no-pin)")
        args.no_pin = True

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path: Path = args.out or OUT_DIR / f"results-{stamp}.json"
    facts = machine_facts()
    meta = {
        "started": stamp, "machine": facts, "argv": sys.argv, "modes": args.modes,
        "relays": {r.name: shlex.join(r.command) for r in single},
        "versions": {r.name: r.version() for r in media_specs + single},
        "pinning": None
        if args.no_pin
        else {
            "relay": args.relay_cpu,
            "generator": args.gen_cpu,
            "control_clients": args.client_cpu,
        },
    }  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    # a background job may inherit SIGINT ignored; make ^C / kill -INT always stop us cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)

    doc: dict[str, Any] = {"meta": meta, "interrupted": False}
    deadline = time.monotonic() + args.max_wall
    try:
        for mode in args.modes:
            if mode == "control":
                doc["control"] = control.run(args, single, deadline)
            elif mode == "memory":
                doc["memory"] = memory.run(args, single, deadline)
            else:
                doc["media"] = run_media(args, media_specs, deadline)
    except (KeyboardInterrupt, Interrupted) as exc:
        doc["interrupted"] = True
        log(f"interrupted ({exc!r}); writing partial results")
    finally:
        kill_all_started()

    out_path.write_text(json.dumps(doc, indent=1, default=str))
    pin = "not pinned" if args.no_pin else (
        f"relay on CPU {args.relay_cpu}, generator on CPU {args.gen_cpu}, "
        f"control clients on CPU {args.client_cpu}")  # fmt: skip
    print(
        f"machine: {facts['cpus']} x {facts['cpu_model']}, kernel {facts['kernel']}, "
        f"{facts['mem_gib']} GiB; {pin}; repeat {args.repeat}"
    )
    for name, version in meta["versions"].items():
        print(f"  {name}: [{version}]")
    if "control" in doc:
        control.print_tables(doc["control"]["summary"], baseline)
    if "memory" in doc:
        memory.print_table(doc["memory"]["summary"])
    if "media" in doc:
        media = doc["media"]
        print(
            f"\n== media: {args.step_seconds:g}s per step ({args.warmup:g}s warm-up), "
            f"{args.rate:g} pps per direction, {media['media_family']}"
        )
        print_tables(media["summary"], media_specs, args.baseline or media_specs[0].name)
        if args.plot:
            plot(media["summary"], media_specs, args.plot, plot_title(facts))
    print(f"\nraw results: {out_path}")
    return 130 if doc["interrupted"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_all_started()
