"""The memory mode of benchmarks/run.py (``--mode memory``; see benchmarks/README.md).

What idle sessions cost: a fresh relay, then ``--idle-sessions`` sessions created with U
and L (both legs, no media), then the relay's resident memory (``VmRSS``), its open file
descriptors and the machine's UDP sockets and kernel slab before and after, per session.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from relays import (
    OUT_DIR,
    ControlSocket,
    Interrupted,
    RelaySpec,
    UdpClient,
    ephemeral_range,
    fd_count,
    kernel_memory,
    log,
    no_port,
    relay_cpus,
    relay_process,
    rounds,
    rss_kb,
)

SETTLE_S = 1.0  # after the last command: let the relay finish what it started


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory mode")
    g.add_argument(
        "--idle-sessions",
        type=int,
        default=1000,
        help="sessions (U and L, no media) whose memory is measured (default 1000)",
    )


def snapshot(pid: int) -> dict[str, int | None]:
    return {"rss_kb": rss_kb(pid), "fds": fd_count(pid), **kernel_memory()}


def measure(args: argparse.Namespace, spec: RelaySpec, rep: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"relay": spec.name, "rep": rep, "sessions": args.idle_sessions}
    eph_lo, _eph_hi = ephemeral_range()
    control = ControlSocket("udp", args.ctl_port)
    cpus = relay_cpus(args)
    logfile = OUT_DIR / "logs" / f"memory-{spec.name}-r{rep}.log"
    try:
        with relay_process(
            spec, control, args.port_min, eph_lo - 2, None if cpus is None else cpus[0],
            logfile, args.ready_timeout,
        ) as proc:  # fmt: skip
            client = UdpClient(control.port, args.timeout, f"mb{rep}")
            suffix = spec.tag_suffix
            client.ask("V")
            time.sleep(SETTLE_S)
            before = snapshot(proc.pid)
            failed = 0
            for i in range(args.idle_sessions):
                callid = f"mem{rep}-{i}"
                u = client.ask(f"U {callid} 127.0.0.1 {20000 + 4 * (i % 1000)} ft{i}{suffix}")
                link = f"L {callid} 127.0.0.1 {20002 + 4 * (i % 1000)} ft{i}{suffix} tt{i}{suffix}"
                answer = client.ask(link)
                failed += any(r is None or r.startswith("E") or no_port(r) for r in (u, answer))
            time.sleep(SETTLE_S)
            after = snapshot(proc.pid)
            client.close()
            rec["relay_alive"] = proc.poll() is None
        rec.update(before=before, after=after, failed=failed)
        n = args.idle_sessions - failed
        for key, value in after.items():
            was = before.get(key)
            if value is not None and was is not None and n > 0:
                rec[f"{key}_per_session"] = round((value - was) / n, 3)
    except RuntimeError as exc:
        rec["error"] = str(exc)
    return rec


FIGURES = ("rss_kb", "fds", "udp_inuse", "slab_kb", "sunreclaim_kb", "udp_mem_pages")


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for relay in dict.fromkeys(r["relay"] for r in results):
        recs = [r for r in results if r["relay"] == relay]
        row: dict[str, Any] = {
            "relay": relay,
            "runs": len(recs),
            "failed_sessions": sum(int(r.get("failed", 0)) for r in recs),
            "errors": sorted({r["error"] for r in recs if "error" in r}),
            "rss_kb_idle": statistics.median(
                [r["before"]["rss_kb"] for r in recs if r.get("before", {}).get("rss_kb")] or [0]
            ),
        }
        for key in FIGURES:
            vals = [r[f"{key}_per_session"] for r in recs if f"{key}_per_session" in r]
            row[f"{key}_per_session"] = statistics.median(vals) if vals else None
        rows.append(row)
    return rows


def per_session(row: dict[str, Any], key: str) -> str:
    value = row[f"{key}_per_session"]
    return "-" if value is None else f"{value:.2f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n== memory: idle sessions (U+L, no media), per session, medians")
    print("   RSS: the relay's VmRSS; slab: the machine's kernel slab (all of it, noisy);")
    print("   udp: UDP sockets in use (/proc/net/sockstat); fds: the relay's descriptors")
    head = f"{'relay':<10} {'idle RSS MB':>11} {'RSS kB':>8} {'slab kB':>8} {'unrecl kB':>9}"
    print(head + f" {'udp socks':>9} {'fds':>6}  flags")
    for r in rows:
        f = {key: per_session(r, key) for key in FIGURES}
        flags = []
        if r["failed_sessions"]:
            flags.append(f"{r['failed_sessions']} sessions failed")
        if r["errors"]:
            flags.append(" | ".join(r["errors"])[:80])
        print(
            f"{r['relay']:<10} {r['rss_kb_idle'] / 1024:>11.1f} {f['rss_kb']:>8} {f['slab_kb']:>8}"
            f" {f['sunreclaim_kb']:>9} {f['udp_inuse']:>9} {f['fds']:>6}  " + " ".join(flags)
        )


def run(args: argparse.Namespace, relays: list[RelaySpec], deadline: float) -> dict[str, Any]:
    """Every relay --repeat times; the raw records and the summary."""
    section: dict[str, Any] = {"idle_sessions": args.idle_sessions, "results": []}
    results: list[dict[str, Any]] = section["results"]
    try:
        for rep, order in rounds(relays, args.repeat):
            for spec in order:
                if time.monotonic() > deadline:
                    raise Interrupted("max-wall")
                rec = measure(args, spec, rep)
                results.append(rec)
                log(
                    f"rep {rep} {spec.name} memory: {rec.get('rss_kb_per_session', '-')} kB RSS, "
                    f"{rec.get('slab_kb_per_session', '-')} kB slab, "
                    f"{rec.get('fds_per_session', '-')} fds per session"
                    + (f" [{rec['error']}]" if "error" in rec else "")
                )
                time.sleep(args.pause)
    finally:
        section["summary"] = summarise(results)
    return section
