#!/usr/bin/env python3
"""The control mode of benchmarks/run.py (``--mode control``; see benchmarks/README.md).

Each client creates and deletes sessions with U+L+D triples, waiting for every reply
before it sends the next command (as Kamailio does), over the unix control socket and
over UDP with cookies, with 1 and with 8 concurrent clients. A relay that has no unix
control socket (rtpengine) is measured over UDP only. With ``--media-sessions N`` the
UDP configurations are run once more (socket ``udp+media``) while the C load generator
keeps N calls relaying RTP (``--rate`` packets/s each way) through the same relay; the
relay's CPU per triple then includes the media's.

Example (``python benchmarks/control.py ARGS`` is ``run.py --mode control ARGS``):
    python benchmarks/run.py --mode control --relay base=/work/bench-base/.venv/bin/pyrtpproxy \\
        --relay new=.venv/bin/pyrtpproxy --triples 10000 --seconds 10 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from relays import (
    OUT_DIR,
    Client,
    ControlSocket,
    Interrupted,
    RelaySpec,
    UdpClient,
    UnixClient,
    build_loadgen,
    control_query,
    descendants,
    ephemeral_range,
    loadgen_argv,
    log,
    no_port,
    relay_cpus,
    relay_process,
    rounds,
)

TRANSPORTS = ("unix", "udp")
MEDIA = "udp+media"  # the UDP configuration again, with calls relaying RTP meanwhile
COMMANDS = ("U", "L", "D")
CLIENT_BOUND = 0.9  # clients using this share of the cores they run on measured themselves
PROC_STAT_BUSY = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal, in /proc/stat "cpu"


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Target:
    """Where a relay's control socket is and how long a client waits for a reply."""

    socket: ControlSocket
    timeout: float

    def client(self, tag: str) -> Client:
        if self.socket.transport == "unix":
            return UnixClient(self.socket.path, self.timeout)
        return UdpClient(self.socket.port, self.timeout, tag)

    def probe(self) -> str | None:
        """One ``V`` with a short timeout, for the relay's readiness check."""
        if self.socket.transport == "udp":
            return control_query(self.socket.port, "V")
        return UnixClient(self.socket.path, 0.3).ask("V")


@dataclass(frozen=True)
class ClientJob:
    index: int
    prefix: str  # call-id prefix, unique per run
    triples: int
    seconds: float
    warmup: int
    cpu: int | None
    tag_suffix: str = ""  # ";1" for relays that take only Kamailio's tag;medianum

    def callid(self, label: str) -> str:
        """A call-id no other client uses (rtpengine keys a call on the call-id alone)."""
        return f"{self.prefix}c{self.index}-{label}"


def triple_commands(job: ClientJob, callid: str) -> tuple[str, str, str]:
    port = 40000 + 4 * job.index
    ft, tt = f"ft{job.index}{job.tag_suffix}", f"tt{job.index}{job.tag_suffix}"
    return (
        f"U {callid} 127.0.0.1 {port} {ft}",
        f"L {callid} 127.0.0.1 {port + 2} {ft} {tt}",
        f"D {callid} {ft} {tt}",
    )


def client_main(target: Target, job: ClientJob, barrier: Barrier, results: Queue[Any]) -> None:
    """One client process: warm up, wait for the others, run its triples, report."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if job.cpu is not None:
        os.sched_setaffinity(0, {job.cpu})
    client = target.client(f"cb{os.getpid()}")
    warmup_errors = 0
    for i in range(job.warmup):
        replies = [client.ask(c) for c in triple_commands(job, job.callid(f"w{i}"))]
        warmup_errors += sum(r is None or r.startswith("E") for r in replies)
        if None in replies:
            break  # the relay does not answer; do not wait out every timeout
    barrier.wait()
    lat: dict[str, list[float]] = {c: [] for c in COMMANDS}
    errors = dict.fromkeys(COMMANDS, 0)
    missing = 0
    port_zero = 0
    samples: list[str] = []
    done = 0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t_start = time.monotonic()
    deadline = t_start + job.seconds
    for i in range(job.triples):
        if time.monotonic() >= deadline:
            break
        for kind, command in zip(COMMANDS, triple_commands(job, job.callid(str(i))), strict=True):
            t0 = time.monotonic()
            reply = client.ask(command)
            t1 = time.monotonic()
            if reply is None:
                missing += 1
                errors[kind] += 1
                if len(samples) < 5:
                    samples.append(f"{command} -> (no reply)")
                continue  # a timeout is not a latency
            lat[kind].append(t1 - t0)
            if reply.startswith("E"):
                errors[kind] += 1
                if len(samples) < 5:
                    samples.append(f"{command} -> {reply}")
            elif kind != "D" and no_port(reply):  # e.g. "0", the answer to L on a miss
                port_zero += 1
                if len(samples) < 5:
                    samples.append(f"{command} -> {reply}")
        done += 1
    t_end = time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    client.close()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    results.put(
        {
            "client": job.index,
            "t_start": t_start,
            "t_end": t_end,
            "triples": done,
            "errors": errors,
            "missing": missing,
            "port_zero": port_zero,
            "warmup_errors": warmup_errors,
            "error_samples": samples,
            "cpu_s": cpu,
            "lat": lat,
        }
    )


# --------------------------------------------------------------------------- measuring


def sched_seconds(pids: list[int]) -> float:
    """CPU time (ns precision, from schedstat) of every thread of the given processes."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(stat.read_text().split()[0])
    return total / 1e9


def machine_busy_seconds() -> float:
    """Busy time of all CPUs from /proc/stat (tick-sampled: only an indication)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        return sum(int(fields[i]) for i in PROC_STAT_BUSY) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_figures(values: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max/mean of latencies given in seconds, in milliseconds."""
    ordered = sorted(values)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(1000 * v, 4)

    return {
        "n": len(ordered),
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p90_ms": ms(percentile(ordered, 0.90)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "p999_ms": ms(percentile(ordered, 0.999)),
        "max_ms": ms(ordered[-1] if ordered else None),
        "mean_ms": ms(statistics.fmean(ordered) if ordered else None),
    }


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@contextlib.contextmanager
def media_load(
    args: argparse.Namespace, spec: RelaySpec, relay_pid: int, tag: str, rec: dict[str, Any]
) -> Iterator[None]:
    """``--media-sessions`` calls relaying RTP through the relay for as long as the block
    runs (it is entered once they are set up and past ``--warmup``); the generator's loss
    and one-way p99 go into ``rec["media"]``."""
    seconds = args.seconds + 3 * args.timeout + 5  # outlasts the clients
    argv = loadgen_argv(
        args, build_loadgen(), spec, tag, args.media_sessions, seconds, [(args.ctl_port, relay_pid)]
    )
    gen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    set_up = threading.Event()
    stderr: list[str] = []

    def watch_stderr() -> None:
        assert gen.stderr is not None
        for line in gen.stderr:
            stderr.append(line)
            if " sessions set up in " in line:
                set_up.set()

    watcher = threading.Thread(target=watch_stderr, daemon=True)
    watcher.start()
    try:
        if not set_up.wait(args.setup_timeout + 5):
            raise RuntimeError(
                "the media load did not set up its sessions: " + "".join(stderr)[-300:]
            )
        time.sleep(args.warmup)  # media flowing, the generator's own warm-up over
        yield
    finally:
        try:
            out, _ = gen.communicate(timeout=seconds + args.drain + args.setup_timeout + 30)
        except subprocess.TimeoutExpired:
            gen.kill()  # our own child, by its handle
            out, _ = gen.communicate()
        watcher.join(2)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if gen.returncode != 0 or not lines:
        raise RuntimeError(f"media load rc={gen.returncode}: " + "".join(stderr)[-300:])
    lg = json.loads(lines[-1])
    rec["media"] = {
        "sessions": args.media_sessions,
        "loss_pct": lg.get("loss_pct_total"),
        "p99_ms": lg["lat_us"]["p99"] / 1000 if "lat_us" in lg else None,
    }


def run_config(
    args: argparse.Namespace,
    spec: RelaySpec,
    transport: str,
    clients: int,
    rep: int,
    port_lo: int,
    port_hi: int,
) -> dict[str, Any]:
    rec: dict[str, Any] = {"relay": spec.name, "transport": transport, "clients": clients}
    rec["rep"] = rep
    with_media = transport == MEDIA
    if with_media:
        transport = "udp"
    sock_path = OUT_DIR / "run" / f"{spec.name}-ctl.sock"
    if len(str(sock_path)) > 100:  # sun_path holds 108 bytes
        sock_path = Path(tempfile.gettempdir()) / f"ctlbench-{os.getpid()}-{spec.name}.sock"
    sock_path.parent.mkdir(parents=True, exist_ok=True)
    sock_path.unlink(missing_ok=True)
    target = Target(ControlSocket(transport, args.ctl_port, str(sock_path)), args.timeout)
    logfile = OUT_DIR / "logs" / f"control-{spec.name}-{transport}-c{clients}-r{rep}.log"
    cpus = relay_cpus(args)
    relay_cpu = None if cpus is None else cpus[0]
    client_cpu = None if args.no_pin else args.client_cpu
    ctx = multiprocessing.get_context("fork")
    workers: list[multiprocessing.context.ForkProcess] = []
    try:
        with contextlib.ExitStack() as stack:
            proc = stack.enter_context(
                relay_process(
                    spec,
                    target.socket,
                    port_lo,
                    port_hi,
                    relay_cpu,
                    logfile,
                    args.ready_timeout,
                    probe=target.probe,
                )
            )
            relay_pids = descendants(proc.pid)
            load = (
                media_load(args, spec, proc.pid, f"cm{os.getpid()}r{rep}c{clients}", rec)
                if with_media
                else contextlib.nullcontext()
            )
            stack.enter_context(load)
            barrier = ctx.Barrier(clients + 1)
            results: Queue[Any] = ctx.Queue()
            prefix = f"cb{os.getpid()}r{rep}{transport}{clients}"
            for i, n in enumerate(split(args.triples, clients)):
                job = ClientJob(
                    i, prefix, n, args.seconds, args.control_warmup, client_cpu, spec.tag_suffix
                )
                worker = ctx.Process(target=client_main, args=(target, job, barrier, results))
                worker.start()
                workers.append(worker)
            barrier.wait(timeout=args.ready_timeout + 3 * args.timeout * args.control_warmup)
            cpu0 = sched_seconds(relay_pids)
            busy0 = machine_busy_seconds()
            limit = time.monotonic() + args.seconds + 3 * args.timeout + 30
            reports = []
            for _ in workers:
                reports.append(results.get(timeout=max(0.1, limit - time.monotonic())))
            busy1 = machine_busy_seconds()
            rec["relay_cpu_s"] = round(sched_seconds(relay_pids) - cpu0, 4)
            rec["relay_alive"] = proc.poll() is None
        tally(rec, reports, busy1 - busy0, args.no_pin)
    except threading.BrokenBarrierError:
        rec["error"] = "clients did not get ready (see the relay log: " + str(logfile) + ")"
    except RuntimeError as exc:  # from relay_process
        rec["error"] = str(exc)
    except queue.Empty:
        rec["error"] = "a client did not report in time (hung or died)"
    finally:
        for worker in workers:
            worker.join(timeout=2)
            if worker.is_alive():
                worker.terminate()  # by its pid: one of ours
                worker.join(timeout=2)
        sock_path.unlink(missing_ok=True)
    return rec


def tally(rec: dict[str, Any], reports: list[dict[str, Any]], busy: float, no_pin: bool) -> None:
    wall = max(r["t_end"] for r in reports) - min(r["t_start"] for r in reports)
    triples = sum(r["triples"] for r in reports)
    every: list[float] = []
    per_command: dict[str, dict[str, float | None]] = {}
    for kind in COMMANDS:
        values = [v for r in reports for v in r["lat"][kind]]
        per_command[kind] = latency_figures(values)
        every.extend(values)
    errors = {kind: sum(r["errors"][kind] for r in reports) for kind in COMMANDS}
    client_cpu = sum(r["cpu_s"] for r in reports)
    client_cores = (os.cpu_count() or 1) if no_pin else 1
    rec.update(
        wall_s=round(wall, 4),
        triples=triples,
        triples_per_s=round(triples / wall, 1) if wall > 0 else None,
        latency=latency_figures(every),
        latency_by_command=per_command,
        errors=sum(errors.values()),
        errors_by_command=errors,
        missing=sum(r["missing"] for r in reports),
        port_zero=sum(r["port_zero"] for r in reports),
        warmup_errors=sum(r["warmup_errors"] for r in reports),
        error_samples=[s for r in reports for s in r["error_samples"]][:10],
        relay_cpu_pct=round(100 * rec["relay_cpu_s"] / wall, 1) if wall > 0 else None,
        relay_us_per_triple=round(1e6 * rec["relay_cpu_s"] / triples, 1) if triples else None,
        client_cpu_s=round(client_cpu, 4),
        client_cpu_pct=round(100 * client_cpu / wall, 1) if wall > 0 else None,
        client_bound=wall > 0 and client_cpu / wall >= CLIENT_BOUND * client_cores,
        foreign_pct=round(100 * max(0.0, busy - client_cpu - rec["relay_cpu_s"]) / wall, 1)
        if wall > 0
        else None,
    )


# --------------------------------------------------------------------------- summaries

FIGURES = ["triples_per_s", "p50_ms", "p99_ms", "max_ms", "relay_us_per_triple",
           "relay_cpu_pct", "client_cpu_pct", "foreign_pct", "media_p99_ms",
           "media_loss_pct"]  # fmt: skip


def figure(rec: dict[str, Any], key: str) -> float | None:
    if "latency" not in rec:
        return None
    if key.startswith("media_"):
        value = (rec.get("media") or {}).get(key.removeprefix("media_"))
    elif key.endswith("_ms"):
        value = rec["latency"][key]
    else:
        value = rec.get(key)
    return None if value is None else float(value)


def summarise(results: list[dict[str, Any]], versions: dict[str, str]) -> list[dict[str, Any]]:
    """One row per relay, transport and client count: medians over the repeats."""
    keys: list[tuple[str, str, int]] = []
    for r in results:
        key = (r["relay"], r["transport"], int(r["clients"]))
        if key not in keys:
            keys.append(key)
    rows = []
    for relay, transport, clients in keys:
        recs = [
            r
            for r in results
            if (r["relay"], r["transport"], int(r["clients"])) == (relay, transport, clients)
        ]
        row: dict[str, Any] = {
            "relay": relay,
            "version": versions.get(relay, "?"),
            "transport": transport,
            "clients": clients,
            "runs": len(recs),
            "failed_runs": sum("error" in r for r in recs),
            "triples": sum(int(r.get("triples", 0)) for r in recs),
            "errors": sum(int(r.get("errors", 0)) for r in recs),
            "port_zero": sum(int(r.get("port_zero", 0)) for r in recs),
            "client_bound_runs": sum(bool(r.get("client_bound")) for r in recs),
            "relay_died_runs": sum(not r.get("relay_alive", True) for r in recs),
            "why": sorted({r["error"] for r in recs if "error" in r}),
            "error_samples": [s for r in recs for s in r.get("error_samples", [])][:5],
        }
        for name in FIGURES:
            vals = [v for v in (figure(r, name) for r in recs) if v is not None]
            row[name] = statistics.median(vals) if vals else None
        rows.append(row)
    return rows


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_tables(rows: list[dict[str, Any]], baseline: str) -> None:
    cols = [("triples/s", "triples_per_s", ".0f"), ("p50 ms", "p50_ms", ".3f"),
            ("p99 ms", "p99_ms", ".3f"), ("max ms", "max_ms", ".2f"),
            ("us/triple", "relay_us_per_triple", ".0f"), ("relay%", "relay_cpu_pct", ".0f"),
            ("client%", "client_cpu_pct", ".0f"), ("other%", "foreign_pct", ".0f"),
            ("RTP p99", "media_p99_ms", ".3f"), ("RTP loss%", "media_loss_pct", ".3f")]  # fmt: skip
    width = max([len(r["relay"]) for r in rows] + [5])
    print("\n== control plane: U+L+D triples, each client waits for every reply (medians)")
    print("   us/triple: relay CPU per triple; relay%/client%: of one core; errors: E or no reply")
    print("   udp+media: while the load generator relays RTP (RTP p99: its one-way latency)")
    head = f"{'relay':<{width}} {'socket':<9} {'clients':>7} {'triples':>8} {'errors':>6}"
    print(head + "".join(f" {c[0]:>9}" for c in cols) + "  flags")
    for r in rows:
        line = f"{r['relay']:<{width}} {r['transport']:<9} {r['clients']:>7} {r['triples']:>8}"
        line += f" {r['errors']:>6}" + "".join(f" {fmt(r[k], f):>9}" for _, k, f in cols)
        flags = []
        if r["failed_runs"]:
            flags.append(f"FAIL {r['failed_runs']}/{r['runs']} ({' | '.join(r['why'])[:80]})")
        if r["relay_died_runs"]:
            flags.append(f"relay died {r['relay_died_runs']}/{r['runs']}")
        if r["port_zero"]:
            flags.append(f"{r['port_zero']} U/L answered port 0")
        if r["client_bound_runs"]:
            flags.append(f"client-bound {r['client_bound_runs']}/{r['runs']}")
        if r["error_samples"]:
            flags.append(f"e.g. {r['error_samples'][0]!r}")
        print(line + "  " + " ".join(flags))
    base = {(r["transport"], r["clients"]): r for r in rows if r["relay"] == baseline}
    others = [r for r in rows if r["relay"] != baseline]
    if not base or not others:
        return
    print(f"\n== ratios vs {baseline} (triples/s: >1 is faster; p99 and us/triple: >1 is worse)")
    for r in others:
        b = base.get((r["transport"], r["clients"]))
        if b is None:
            continue
        parts = []
        for label, key in (("triples/s", "triples_per_s"), ("p99", "p99_ms"),
                           ("us/triple", "relay_us_per_triple")):  # fmt: skip
            a, d = r[key], b[key]
            parts.append(f"{label} {f'{a / d:.2f}x' if a is not None and d else '-'}")
        print(f"{r['relay']:<{width}} {r['transport']:<9} {r['clients']:>7}  " + "  ".join(parts))


# --------------------------------------------------------------------------- options and run


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control mode")
    g.add_argument(
        "--transport",
        default=",".join(TRANSPORTS),
        help="comma-separated control sockets to use: unix, udp (default both; a relay\n"
        "without a unix control socket, rtpengine, is measured on udp only)",
    )
    g.add_argument(
        "--clients", default="1,8", help="comma-separated concurrent client counts (1,8)"
    )
    g.add_argument(
        "--triples",
        type=int,
        default=10000,
        help="U+L+D triples per configuration, shared by its clients (default 10000)",
    )
    g.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="a configuration stops after this many seconds even if triples are left (10)",
    )
    g.add_argument(
        "--control-warmup",
        type=int,
        default=20,
        help="triples each client runs before the measurement starts (default 20)",
    )
    g.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for a reply (1)")
    g.add_argument(
        "--client-cpu",
        type=int,
        default=None,
        metavar="CPU",
        help="CPU the control clients use (default --gen-cpu). With --media-sessions and a\n"
        "relay that forwards in the kernel, the forwarding runs in the sender's CPU, the\n"
        "generator's: --client-cpu 0 keeps the clients off it",
    )
    g.add_argument(
        "--media-sessions",
        type=int,
        default=0,
        metavar="N",
        help="also run the UDP configurations while N calls relay RTP (socket udp+media;\n"
        "the media mode's --rate, --warmup and --setup-timeout apply; default 0: not)",
    )


def check_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.transports = [t.strip() for t in args.transport.split(",") if t.strip()]
    if not args.transports or any(t not in TRANSPORTS for t in args.transports):
        p.error(f"--transport takes a comma-separated subset of {','.join(TRANSPORTS)}")
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        p.error("--clients takes comma-separated integers")
    if not args.client_counts or not all(1 <= c <= 256 for c in args.client_counts):
        p.error("--clients takes integers 1..256")
    if args.triples < 1 or args.seconds <= 0:
        p.error("--triples and --seconds must be positive")
    if not 0 <= args.media_sessions <= 4000:
        p.error("--media-sessions takes 0..4000")
    if args.media_sessions and "udp" not in args.transports:
        p.error("--media-sessions needs the udp transport (the generator's control socket)")
    if args.client_cpu is None:
        args.client_cpu = args.gen_cpu


def configurations(args: argparse.Namespace, spec: RelaySpec) -> list[str]:
    """The sockets ``spec`` is measured on, ``udp+media`` last when asked for."""
    sockets = [t for t in args.transports if t in spec.transports]
    return sockets + ([MEDIA] if args.media_sessions and "udp" in sockets else [])


def run(args: argparse.Namespace, relays: list[RelaySpec], deadline: float) -> dict[str, Any]:
    """Every relay, socket and client count, --repeat times; raw records and the summary."""
    # sessions live for a moment only, but the reference keeps a deleted session's ports
    # for ~1.5 s: offer every port below the ephemeral range (the clients' own sockets)
    eph_lo, _eph_hi = ephemeral_range()
    port_lo = args.port_min + (args.port_min % 2)
    port_hi = eph_lo - 2
    if port_hi - port_lo < 1000 or port_lo <= args.ctl_port <= port_hi:
        raise SystemExit(f"bad port layout: media {port_lo}-{port_hi}, control {args.ctl_port}")
    section: dict[str, Any] = {
        "transports": args.transports, "clients": args.client_counts,
        "triples": args.triples, "seconds": args.seconds, "warmup": args.control_warmup,
        "timeout": args.timeout, "port_range": [port_lo, port_hi],
        "media_sessions": args.media_sessions, "results": [],
    }  # fmt: skip
    results: list[dict[str, Any]] = section["results"]
    try:
        for rep, order in rounds(relays, args.repeat):
            for spec in order:
                for transport in configurations(args, spec):
                    for clients in args.client_counts:
                        if time.monotonic() > deadline:
                            raise Interrupted("max-wall")
                        rec = run_config(args, spec, transport, clients, rep, port_lo, port_hi)
                        results.append(rec)
                        lat = rec.get("latency") or {}
                        log(
                            f"rep {rep} {spec.name} {transport} clients={clients}: "
                            f"{rec.get('triples', '-')} triples, "
                            f"{rec.get('triples_per_s', '-')}/s, p50={lat.get('p50_ms', '-')}ms "
                            f"p99={lat.get('p99_ms', '-')}ms errors={rec.get('errors', '-')}"
                            + (f" [{rec['error']}]" if "error" in rec else "")
                        )
                        time.sleep(args.pause)
    finally:
        section["summary"] = summarise(results, {r.name: r.version() for r in relays})
    return section


if __name__ == "__main__":
    import run as benchmark
    from relays import kill_all_started

    try:
        sys.exit(benchmark.main(["--mode", "control", *sys.argv[1:]]))
    finally:
        kill_all_started()
