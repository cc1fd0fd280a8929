#!/usr/bin/env python3
"""Soak benchmark: calls created and deleted continuously against one relay for a long
time, watching what must not grow (see benchmarks/README.md, "Soak").

Every ``1/--rate`` seconds a call starts: two parties on 127.0.0.1, ``U`` and ``L`` over
the relay's UDP control socket, then RTP both ways at ``--pps`` packets per second per
direction; after ``--sessions / --rate`` seconds its media stops, and once what is in
flight has landed (``DRAIN`` seconds) it is deleted with ``D``. So ``--sessions`` calls are
up on average once the first call has ended. Every ``--sample`` seconds the relay's RSS,
open descriptors, UDP ports in its media range and active sessions (``I``) are recorded
with the commands failed so far and the media lost. At the end churn stops, every call is
deleted, and a last sample shows whether descriptors and ports went back to the idle
baseline taken before the first call.

Media is one selectors loop in this process (no threads): each party's socket carries one
stream, whose packets carry a 32-bit counter after the RTP header; the receiver counts
packets received (unique by counter), late (a lower counter than one already seen) and
stray (not the stream it expects). Loss is sent minus received.

Example (one hour, 1000 calls up, 20 new calls per second):
    flock /tmp/pyrtpproxy-bench.lock nice -n 5 .venv/bin/python benchmarks/soak.py \\
        --sessions 1000 --rate 20 --duration 3600 --plot benchmarks/soak.png
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import selectors
import shlex
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from relays import (
    OUT_DIR,
    ControlSocket,
    RelaySpec,
    UdpClient,
    cpu_seconds,
    fd_count,
    log,
    machine_facts,
    no_port,
    parse_relays,
    relay_process,
    rss_kb,
    udp_sockets_in_range,
)

RTP_HEADER = struct.Struct("!BBHII")
COUNTER = struct.Struct("!I")
PAYLOAD_BYTES = 160  # 20 ms of G.711, counter included
DRAIN = 0.3  # seconds between a call's last packet and its D, for packets in flight
COMMAND_TIMEOUT = 2.0  # seconds for one control reply
SETTLE = 10.0  # seconds the idle baseline may take to come back after the last D
RECV_BURST = 64  # datagrams read from one socket per wake-up
SELECT_MAX = 0.05  # seconds the loop sleeps at most
WARMUP_SHARE = 0.10  # by default the first 10% of the run is warm-up for the RSS figures


@dataclass
class Stream:
    """One direction of a call, as its receiver sees it."""

    ssrc: int
    sent: int = 0
    received: int = 0
    late: int = 0
    stray: int = 0
    highest: int = -1

    def land(self, packet: bytes) -> None:
        if len(packet) < RTP_HEADER.size + COUNTER.size:
            self.stray += 1
            return
        _vpt, _pt, _seq, _ts, ssrc = RTP_HEADER.unpack_from(packet)
        if ssrc != self.ssrc:
            self.stray += 1
            return
        (n,) = COUNTER.unpack_from(packet, RTP_HEADER.size)
        self.received += 1
        if n > self.highest:
            self.highest = n
        else:
            self.late += 1


@dataclass
class Call:
    index: int
    callid: str
    caller: socket.socket
    callee: socket.socket
    to_caller: Stream  # callee -> relay -> caller
    to_callee: Stream  # caller -> relay -> callee
    caller_sends_to: tuple[str, int] = ("", 0)
    callee_sends_to: tuple[str, int] = ("", 0)
    sending: bool = True


@dataclass
class Totals:
    """Media and command figures over the whole run (calls still up included)."""

    calls_started: int = 0
    calls_deleted: int = 0
    commands: int = 0
    commands_failed: int = 0
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    late: int = 0
    stray: int = 0
    send_errors: int = 0
    max_send_lag_ms: float = 0.0

    def fold(self, stream: Stream) -> None:
        self.sent += stream.sent
        self.received += stream.received
        self.late += stream.late
        self.stray += stream.stray


@dataclass(frozen=True)
class Config:
    sessions: int
    rate: float
    duration: float
    pps: float
    sample: float
    ctl_port: int
    port_min: int
    port_max: int
    warmup: float  # seconds of churn before the RSS figures start

    @property
    def call_seconds(self) -> float:
        return self.sessions / self.rate


def packet(stream: Stream) -> bytes:
    n = stream.sent
    header = RTP_HEADER.pack(0x80, 0, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, stream.ssrc)
    return header + COUNTER.pack(n) + bytes(PAYLOAD_BYTES - COUNTER.size)


def relay_sessions(client: UdpClient) -> int | None:
    """``active sessions`` from the relay's ``I``."""
    reply = client.ask("I")
    for line in (reply or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "active sessions" and value.strip().isdigit():
            return int(value)
    return None


class Soak:
    """The churn, the media and the samples, all on one loop."""

    def __init__(self, config: Config, relay_pid: int) -> None:
        self.config = config
        self.pid = relay_pid
        self.control = UdpClient(config.ctl_port, COMMAND_TIMEOUT, f"soak{os.getpid()}")
        self.probe = UdpClient(config.ctl_port, COMMAND_TIMEOUT, f"soakq{os.getpid()}")
        self.selector = selectors.DefaultSelector()
        self.totals = Totals()
        self.calls: dict[int, Call] = {}
        self.samples: list[dict[str, Any]] = []
        self.sends: list[tuple[float, int]] = []  # (due, call index)
        self.ends: list[tuple[float, int]] = []  # (media stops, call index)
        self.deletes: list[tuple[float, int]] = []  # (D due, call index)
        self.stop_requested = False
        self.t0 = time.monotonic()
        self.relay_cpu0 = cpu_seconds(relay_pid)
        self.gen_cpu0 = own_cpu_seconds()

    # ------------------------------------------------------------------ control

    def command(self, text: str) -> str | None:
        self.totals.commands += 1
        reply = self.control.ask(text)
        if reply is None or reply.startswith("E"):
            self.failed(f"{text} -> {reply if reply is not None else '(no reply)'}")
            return None
        return reply

    def failed(self, what: str) -> None:
        self.totals.commands_failed += 1
        if len(self.totals.failures) < 20:
            self.totals.failures.append(what)

    def port_of(self, text: str) -> tuple[str, int] | None:
        reply = self.command(text)
        if reply is None:
            return None
        if no_port(reply):
            self.failed(f"{text} -> {reply}")
            return None
        return ("127.0.0.1", int(reply.split()[0]))

    # ------------------------------------------------------------------ calls

    def start_call(self, index: int, now: float) -> None:
        caller, callee = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        for s in (caller, callee):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        call = Call(
            index, f"soak{os.getpid()}-{index}", caller, callee,
            to_caller=Stream(ssrc=2 * index + 1), to_callee=Stream(ssrc=2 * index + 2),
        )  # fmt: skip
        self.totals.calls_started += 1
        tags = f"ft{index}"
        offer = self.port_of(f"U {call.callid} 127.0.0.1 {caller.getsockname()[1]} {tags}")
        answer = offer and self.port_of(
            f"L {call.callid} 127.0.0.1 {callee.getsockname()[1]} {tags} tt{index}"
        )
        if not offer or not answer:
            self.command(f"D {call.callid} {tags}")  # whatever was made goes
            caller.close()
            callee.close()
            return
        # the U port faces the callee, the L port the caller
        call.callee_sends_to, call.caller_sends_to = offer, answer
        self.selector.register(caller, selectors.EVENT_READ, call.to_caller)
        self.selector.register(callee, selectors.EVENT_READ, call.to_callee)
        self.calls[index] = call
        heapq.heappush(self.sends, (now, index))
        heapq.heappush(self.ends, (now + self.config.call_seconds, index))

    def stop_media(self, index: int, now: float) -> None:
        call = self.calls.get(index)
        if call is not None and call.sending:
            call.sending = False
            heapq.heappush(self.deletes, (now + DRAIN, index))

    def delete_call(self, index: int) -> None:
        call = self.calls.pop(index)
        self.command(f"D {call.callid} ft{index} tt{index}")
        self.totals.calls_deleted += 1
        for s, stream in ((call.caller, call.to_caller), (call.callee, call.to_callee)):
            self.read(s, stream)  # the last packets in the buffer count
            self.selector.unregister(s)
            s.close()
            self.totals.fold(stream)

    # ------------------------------------------------------------------ media

    def send_due(self, now: float) -> None:
        interval = 1.0 / self.config.pps
        while self.sends and self.sends[0][0] <= now:
            due, index = heapq.heappop(self.sends)
            call = self.calls.get(index)
            if call is None or not call.sending:
                continue
            self.totals.max_send_lag_ms = max(self.totals.max_send_lag_ms, (now - due) * 1000)
            for s, stream, dest in (
                (call.caller, call.to_callee, call.caller_sends_to),
                (call.callee, call.to_caller, call.callee_sends_to),
            ):
                try:
                    s.sendto(packet(stream), dest)
                    stream.sent += 1
                except OSError:  # a full buffer: not sent, so not lost by the relay
                    self.totals.send_errors += 1
            # a late loop does not catch up in a burst: the next packet is due an
            # interval after this one went out
            heapq.heappush(self.sends, (max(due + interval, now), index))

    @staticmethod
    def read(s: socket.socket, stream: Stream) -> None:
        for _ in range(RECV_BURST):
            try:
                stream.land(s.recv(2048))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP unreachable from an earlier send: nothing to read
                return

    def poll(self, timeout: float) -> None:
        for key, _mask in self.selector.select(timeout):
            self.read(key.fileobj, key.data)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ samples

    def media_now(self) -> Totals:
        """Totals with the streams of the calls still up added in."""
        now = Totals(**{k: v for k, v in asdict(self.totals).items() if k != "failures"})
        for call in self.calls.values():
            now.fold(call.to_caller)
            now.fold(call.to_callee)
        return now

    def take_sample(self, phase: str) -> dict[str, Any]:
        media = self.media_now()
        udp = udp_sockets_in_range(self.pid, self.config.port_min, self.config.port_max)
        sample = {
            "t": round(time.monotonic() - self.t0, 2),
            "phase": phase,
            "rss_kb": rss_kb(self.pid),
            "fds": fd_count(self.pid),
            "udp_sockets": udp[0] if udp else None,
            "ports": udp[1] if udp else None,
            "sessions": relay_sessions(self.probe),
            "calls_up": len(self.calls),
            "calls_started": media.calls_started,
            "commands": media.commands,
            "commands_failed": media.commands_failed,
            # the calls deleted so far: their packets have all landed or are lost
            "done_sent": self.totals.sent,
            "done_received": self.totals.received,
            "sent": media.sent,
            "received": media.received,
            "late": media.late,
            "stray": media.stray,
            "relay_cpu_s": round(cpu_seconds(self.pid) - self.relay_cpu0, 2),
            "gen_cpu_s": round(own_cpu_seconds() - self.gen_cpu0, 2),
            "max_send_lag_ms": round(media.max_send_lag_ms, 1),
        }
        self.samples.append(sample)
        return sample

    # ------------------------------------------------------------------ the run

    def run(self) -> None:
        cfg = self.config
        # A relay that has opened a leg may keep something ready for the next one
        # (pyrtpproxy: a few spare, unbound media sockets): the idle baseline is taken
        # after one such leg, so that "back to idle" means nothing was left behind.
        self.control.ask("U soak-baseline 127.0.0.1 9 soak-baseline")
        self.control.ask("D soak-baseline soak-baseline")
        # The leg's sockets close after the D's reply, in a later turn of the relay's
        # loop; a command sent meanwhile over UDP may be read in the same turn as the D,
        # so only the port range itself says when they are gone (bounded by SETTLE).
        settle_end = time.monotonic() + SETTLE
        while time.monotonic() < settle_end:
            udp = udp_sockets_in_range(self.pid, cfg.port_min, cfg.port_max)
            if udp is not None and udp[0] == 0:
                break
            time.sleep(0.01)
        self.take_sample("idle")
        start = time.monotonic()
        churn_end = start + cfg.duration
        next_call = 0
        next_sample = start + cfg.sample
        # bounded in time (churn_end) and in count (one call per 1/rate seconds)
        max_calls = int(cfg.duration * cfg.rate) + 1
        while not self.stop_requested:
            now = time.monotonic()
            if now >= churn_end:
                break
            while next_call < max_calls and start + next_call / cfg.rate <= now:
                self.start_call(next_call, now)
                next_call += 1
            while self.ends and self.ends[0][0] <= now:
                self.stop_media(heapq.heappop(self.ends)[1], now)
            while self.deletes and self.deletes[0][0] <= now:
                self.delete_call(heapq.heappop(self.deletes)[1])
            self.send_due(now)
            if now >= next_sample:
                s = self.take_sample("churn")
                next_sample += cfg.sample
                log(
                    f"t={s['t']:.0f}s calls={s['calls_up']} sessions={s['sessions']} "
                    f"rss={s['rss_kb']}kB fds={s['fds']} ports={s['ports']} "
                    f"failed={s['commands_failed']} lost={s['done_sent'] - s['done_received']}"
                )
            wake = min(
                [start + next_call / cfg.rate, next_sample, churn_end]
                + [q[0][0] for q in (self.sends, self.ends, self.deletes) if q]
            )
            self.poll(min(SELECT_MAX, max(0.0, wake - time.monotonic())))
        self.take_sample("churn")
        self.teardown()

    def teardown(self) -> None:
        """Stop churn, delete every call, wait for the idle baseline (bounded), sample."""
        now = time.monotonic()
        for index in list(self.calls):
            self.stop_media(index, now)
        drain_end = now + DRAIN
        while time.monotonic() < drain_end:
            self.poll(min(SELECT_MAX, max(0.0, drain_end - time.monotonic())))
        for index in list(self.calls):
            self.delete_call(index)
        self.deletes.clear()
        idle = self.samples[0]
        settle_end = time.monotonic() + SETTLE
        while True:
            final = self.take_sample("after")
            back = (final["fds"], final["udp_sockets"], final["sessions"]) == (
                idle["fds"], idle["udp_sockets"], 0,
            )  # fmt: skip
            if back or time.monotonic() >= settle_end:
                break
            self.samples.pop()
            time.sleep(0.5)

    def close(self) -> None:
        for index in list(self.calls):
            call = self.calls.pop(index)
            call.caller.close()
            call.callee.close()
        self.selector.close()
        self.control.close()
        self.probe.close()


# --------------------------------------------------------------------------- figures


def slope_kb_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, kB) points, in kB per hour."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / sxx * 3600


def summarise(config: Config, samples: list[dict[str, Any]], totals: Totals) -> dict[str, Any]:
    idle, after = samples[0], samples[-1]
    churn = [s for s in samples if s["phase"] == "churn"]
    ran = churn[-1]["t"] - idle["t"] if churn else 0.0
    warm = [s for s in churn if s["t"] - idle["t"] >= config.warmup]
    rss_points = [(s["t"], s["rss_kb"]) for s in warm if s["rss_kb"] is not None]
    steady = [s for s in churn if s["t"] - idle["t"] >= config.call_seconds]
    sessions = [s["sessions"] for s in steady if s["sessions"] is not None]
    sent = totals.sent
    return {
        "ran_s": round(ran, 1),
        "rss_kb_idle": idle["rss_kb"],
        "rss_kb_warm": rss_points[0][1] if rss_points else None,
        "rss_kb_end": rss_points[-1][1] if rss_points else None,
        "rss_kb_after": after["rss_kb"],
        "rss_slope_kb_per_hour": slope_kb_per_hour(rss_points),
        "fds_idle": idle["fds"],
        "fds_peak": max((s["fds"] or 0) for s in samples),
        "fds_after": after["fds"],
        "ports_idle": idle["ports"],
        "ports_peak": max((s["ports"] or 0) for s in samples),
        "ports_after": after["ports"],
        "udp_sockets_idle": idle["udp_sockets"],
        "udp_sockets_peak": max((s["udp_sockets"] or 0) for s in samples),
        "udp_sockets_after": after["udp_sockets"],
        "sessions_after": after["sessions"],
        "sessions_steady_min": min(sessions) if sessions else None,
        "sessions_steady_mean": round(sum(sessions) / len(sessions), 1) if sessions else None,
        "sessions_steady_max": max(sessions) if sessions else None,
        "calls_started": totals.calls_started,
        "calls_deleted": totals.calls_deleted,
        "commands": totals.commands,
        "commands_failed": totals.commands_failed,
        "failures": totals.failures,
        "packets_sent": sent,
        "packets_received": totals.received,
        "packets_lost": sent - totals.received,
        "loss_pct": round(100.0 * (sent - totals.received) / sent, 4) if sent else None,
        "packets_late": totals.late,
        "packets_stray": totals.stray,
        "send_errors": totals.send_errors,
        "max_send_lag_ms": round(totals.max_send_lag_ms, 1),
        "relay_cpu_s": after["relay_cpu_s"],
        "gen_cpu_s": after["gen_cpu_s"],
    }


def soak(spec: RelaySpec, config: Config, logfile: Path, cpu: int | None = None) -> dict[str, Any]:
    """Start the relay, run the soak against it, stop it; the run's record."""
    control = ControlSocket("udp", port=config.ctl_port)
    started = time.time()
    with relay_process(
        spec, control, config.port_min, config.port_max, cpu, logfile, ready_timeout=20.0
    ) as proc:
        run = Soak(config, proc.pid)
        previous = {
            sig: signal.signal(sig, lambda _s, _f: setattr(run, "stop_requested", True))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            run.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            run.close()
        relay_alive = proc.poll() is None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "relay": {"name": spec.name, "command": shlex.join(spec.command), "alive": relay_alive},
        "config": {
            **asdict(config),
            "call_seconds": config.call_seconds,
            "payload_bytes": PAYLOAD_BYTES,
            "drain_s": DRAIN,
        },
        "stopped_early": run.stop_requested,
        "machine": machine_facts(),
        "summary": summarise(config, run.samples, run.totals),
        "samples": run.samples,
    }


# --------------------------------------------------------------------------- output


def print_summary(record: dict[str, Any]) -> None:
    s, c = record["summary"], record["config"]
    print(
        f"soak of {record['relay']['name']}: {c['sessions']} sessions, {c['rate']} calls/s "
        f"({c['call_seconds']:.0f} s each), {c['pps']} pps per direction, ran {s['ran_s']} s"
        + (" (stopped early)" if record["stopped_early"] else "")
    )
    print(
        f"  RSS: idle {s['rss_kb_idle']} kB, after warm-up {s['rss_kb_warm']} kB, "
        f"at the end {s['rss_kb_end']} kB, slope {fmt(s['rss_slope_kb_per_hour'])} kB/hour, "
        f"after the last call {s['rss_kb_after']} kB"
    )
    print(
        f"  fds: idle {s['fds_idle']}, peak {s['fds_peak']}, after the last call {s['fds_after']}"
    )
    print(
        f"  ports (UDP sockets): idle {s['ports_idle']} ({s['udp_sockets_idle']}), peak "
        f"{s['ports_peak']} ({s['udp_sockets_peak']}), after the last call {s['ports_after']} "
        f"({s['udp_sockets_after']})"
    )
    print(
        f"  sessions: steady {s['sessions_steady_min']}..{s['sessions_steady_max']} "
        f"(mean {s['sessions_steady_mean']}), after the last call {s['sessions_after']}"
    )
    print(
        f"  calls: {s['calls_started']} started, {s['calls_deleted']} deleted; commands: "
        f"{s['commands']}, {s['commands_failed']} failed"
    )
    print(
        f"  media: {s['packets_sent']} sent, {s['packets_lost']} lost ({s['loss_pct']}%), "
        f"{s['packets_late']} late, {s['packets_stray']} stray, {s['send_errors']} not sent; "
        f"generator lag max {s['max_send_lag_ms']} ms"
    )
    print(
        f"  CPU over the run: relay {s['relay_cpu_s']} s, generator {s['gen_cpu_s']} s "
        f"({pct(s['relay_cpu_s'], s['ran_s'])} and {pct(s['gen_cpu_s'], s['ran_s'])} of a core)"
    )
    for failure in s["failures"][:5]:
        print(f"  failed: {failure}")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def pct(seconds: float, over: float) -> str:
    return f"{100 * seconds / over:.0f}%" if over else "-"


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def plot(record: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (pip install matplotlib)")
        return
    samples = record["samples"]
    minutes = [s["t"] / 60 for s in samples]
    lost_pct = [
        100.0 * (s["done_sent"] - s["done_received"]) / s["done_sent"] if s["done_sent"] else 0.0
        for s in samples
    ]
    panels: list[tuple[str, list[tuple[str, list[float | None]]]]] = [
        ("relay RSS (MiB)", [("", [s["rss_kb"] / 1024 if s["rss_kb"] else None for s in samples])]),
        ("relay open fds", [("", [s["fds"] for s in samples])]),
        (
            "relay media range in use",
            [
                ("ports", [s["ports"] for s in samples]),
                ("UDP sockets", [s["udp_sockets"] for s in samples]),
            ],
        ),
        ("relay sessions (I)", [("", [s["sessions"] for s in samples])]),
        ("media lost, calls deleted so far (%)", [("", lost_pct)]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(24, 4.5))
    for ax, (ylabel, series) in zip(axes, panels, strict=True):
        for label, ys in series:
            ax.plot(minutes, ys, marker=".", linewidth=1, label=label or None)
        ax.axvline(record["config"]["warmup"] / 60, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("minutes (dotted: end of warm-up)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
    c, m = record["config"], record["machine"]
    fig.suptitle(
        f"soak of {record['relay']['name']} {record['started']}: {c['sessions']} sessions, "
        f"{c['rate']} calls/s, {c['pps']} pps per direction; {m['cpus']} CPUs {m['cpu_model']}"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    log(f"plot written to {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--relay",
        default=f"pyrtpproxy={sys.executable} -m pyrtpproxy",
        metavar="NAME=COMMAND",
        help="the relay (default: pyrtpproxy of this Python); COMMAND gets rtpproxy flags",
    )
    p.add_argument("--sessions", type=int, default=1000, help="calls up on average (1000)")
    p.add_argument("--rate", type=float, default=20.0, help="new calls per second (20)")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of churn (3600)")
    p.add_argument("--pps", type=float, default=5.0, help="RTP packets/s per direction (5)")
    p.add_argument(
        "--warmup", type=float, help="seconds before the RSS figures start (10%% of --duration)"
    )
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples (5)")
    p.add_argument("--ctl-port", type=int, default=9400, help="relay UDP control port (9400)")
    p.add_argument("--port-min", type=int, default=10000, help="relay media port range start")
    p.add_argument(
        "--port-max", type=int, help="relay media port range end (default: 8 per session)"
    )
    p.add_argument("--relay-cpu", type=int, default=0, help="CPU the relay is pinned to (0)")
    p.add_argument("--gen-cpu", type=int, default=1, help="CPU this generator runs on (1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin relay or generator")
    p.add_argument("--out", type=Path, help="JSON output (default benchmarks/out/soak-*.json)")
    p.add_argument("--plot", type=Path, help="PNG output (default next to the JSON)")
    p.add_argument(
        "--replot", type=Path, metavar="JSON", help="plot and summarise a run's JSON; run nothing"
    )
    args = p.parse_args(argv)
    if args.sessions < 1 or args.rate <= 0 or args.duration <= 0 or args.pps <= 0:
        p.error("--sessions, --rate, --duration and --pps must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        record = json.loads(args.replot.read_text())
        plot(record, args.plot or args.replot.with_suffix(".png"))
        print_summary(record)
        return 0
    (spec,) = parse_relays([args.relay])
    # 4 ports a call (RTP and RTCP on both sides), twice over for the calls in their drain
    port_max = args.port_max or args.port_min + max(1000, 8 * args.sessions) - 1
    config = Config(
        sessions=args.sessions, rate=args.rate, duration=args.duration, pps=args.pps,
        sample=args.sample, ctl_port=args.ctl_port, port_min=args.port_min,
        port_max=port_max,
        warmup=args.duration * WARMUP_SHARE if args.warmup is None else args.warmup,
    )  # fmt: skip
    if not args.no_pin:
        os.sched_setaffinity(0, {args.gen_cpu})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or OUT_DIR / f"soak-{stamp}.json"
    record = soak(
        spec,
        config,
        OUT_DIR / "logs" / f"soak-{stamp}.log",
        None if args.no_pin else args.relay_cpu,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    log(f"raw results written to {out}")
    plot(record, args.plot or out.with_suffix(".png"))
    print_summary(record)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
