"""How closely prompts keep their 10 ms pace: many concurrent players on loopback.

Starts a relay, sets up ``--players`` calls whose caller is one receiving socket, and
sends ``P-1`` (loop until stopped) with a 10 ms PCMU prompt to every caller. The
receiver takes each packet's kernel arrival time (``SO_TIMESTAMPNS``) and, per stream,
compares it with the stream's 10 ms grid (the grid's offset is the stream's median of
arrival - sequence * 10 ms). Reported: the deviation's p50, p99 and max over every
packet, packets lost, and the relay's CPU. Bounded by ``--seconds`` (after
``--warmup``) and a packet cap; the relay is stopped by its PID.

    python benchmarks/playback_jitter.py --relay py=.venv/bin/pyrtpproxy \\
        --relay ref=/path/to/rtpproxy --players 200 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from relays import (
    OUT_DIR,
    ControlSocket,
    RelaySpec,
    control_query,
    cpu_seconds,
    ephemeral_range,
    kill_all_started,
    log,
    machine_facts,
    parse_relays,
    relay_process,
)

PTIME = 0.010  # the relay's default packet duration (P with an explicit codec list)
PROMPT_SECONDS = 2  # the prompt file: 2 s of PCMU, looped
MAX_PACKETS = 2_000_000  # whatever --players and --seconds say
_TIMESTAMP = struct.Struct("@ll")  # struct timespec
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it from 3.14


def receiver(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def command(ctl_port: int, text: str) -> str:
    for _attempt in range(5):
        reply = control_query(ctl_port, text, timeout=1.0)
        if reply is not None:
            return reply
    raise RuntimeError(f"no reply to {text!r}")


def set_up(ctl_port: int, players: int, listener: int, prompt: str) -> None:
    """``players`` calls; each caller is the ``listener`` socket and hears the prompt."""
    for n in range(players):
        cid = f"pj{n}"
        command(ctl_port, f"U {cid} 127.0.0.1 {listener} ft")
        command(ctl_port, f"L {cid} 127.0.0.1 9 ft tt")  # the callee never sends
        reply = command(ctl_port, f"P-1 {cid} {prompt} 0 ft tt")
        if reply != "0":
            raise RuntimeError(f"P for {cid} answered {reply}")


def receive(
    sock: socket.socket, seconds: float, warmup: float
) -> dict[int, list[tuple[int, float]]]:
    """(sequence, kernel arrival) per SSRC, from ``warmup`` seconds on for ``seconds``."""
    streams: dict[int, list[tuple[int, float]]] = {}
    sock.settimeout(0.2)
    start = time.monotonic()
    measure_from = start + warmup
    stop = measure_from + seconds
    count = 0
    cmsg_space = socket.CMSG_SPACE(_TIMESTAMP.size)
    while time.monotonic() < stop and count < MAX_PACKETS:
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(2048, cmsg_space)
        except TimeoutError:
            continue
        if time.monotonic() < measure_from or len(data) < 12:
            continue
        arrival = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TIMESTAMP.unpack(payload[: _TIMESTAMP.size])
                arrival = sec + nsec / 1e9
        if arrival is None:
            continue
        seq, ssrc = struct.unpack_from("!H4xI", data, 2)
        streams.setdefault(ssrc, []).append((seq, arrival))
        count += 1
    return streams


def deviations(streams: dict[int, list[tuple[int, float]]]) -> tuple[list[float], int]:
    """|arrival - grid| in ms for every packet, and the packets missing in sequence."""
    out: list[float] = []
    lost = 0
    for packets in streams.values():
        first_seq = packets[0][0]
        offsets = []
        steps = []
        unwrapped = 0
        previous = first_seq
        for seq, arrival in packets:
            unwrapped += (seq - previous) % 65536
            previous = seq
            steps.append(unwrapped)
            offsets.append(arrival - unwrapped * PTIME)
        lost += steps[-1] + 1 - len(packets)
        grid = statistics.median(offsets)
        out += [abs(offset - grid) * 1000 for offset in offsets]
    return out, lost


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(spec: RelaySpec, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    prompt = workdir / "prompt"
    Path(f"{prompt}.0").write_bytes(bytes(range(256)) * (8000 * PROMPT_SECONDS // 256))
    sock = receiver()
    listener = sock.getsockname()[1]
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind(("127.0.0.1", 0))
    ctl_port = ctl.getsockname()[1]
    ctl.close()
    cpu = None if args.no_pin else 0
    logfile = OUT_DIR / "playback" / f"{spec.name}.log"
    # below the ephemeral range: other programs' sockets take ports inside it at random
    low = ephemeral_range()[0] - 4 * args.players - 100
    ports = (low, ephemeral_range()[0] - 1)
    with relay_process(spec, ControlSocket("udp", ctl_port), *ports, cpu, logfile, 15) as proc:
        pid = proc.pid  # taskset execs the relay: the same process
        set_up(ctl_port, args.players, listener, str(prompt))
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        streams = receive(sock, args.seconds, args.warmup)
        cpu1, wall1 = cpu_seconds(pid), time.monotonic()
        played = command(ctl_port, "G npkts_played")
    sock.close()
    devs, lost = deviations(streams)
    packets = sum(len(p) for p in streams.values())
    return {
        "relay": spec.name,
        "players": args.players,
        "streams_seen": len(streams),
        "packets": packets,
        "lost": lost,
        "p50_ms": round(percentile(devs, 0.50), 3),
        "p99_ms": round(percentile(devs, 0.99), 3),
        "max_ms": round(max(devs), 3),
        "relay_cpu_share": round((cpu1 - cpu0) / (wall1 - wall0), 3),
        "npkts_played": int(float(played)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--relay", action="append", required=True, metavar="NAME=COMMAND")
    p.add_argument("--players", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per relay")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds ignored after set-up")
    p.add_argument("--no-pin", action="store_true", help="do not pin the relay to CPU 0")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.seconds > 120 or args.players > 2000:
        raise SystemExit("keep it bounded: at most 120 s and 2000 players")
    if not args.no_pin:
        os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})  # the receiver off the relay's CPU
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="playback-jitter-") as tmp:
            for spec in parse_relays(args.relay):
                log(f"{spec.name}: {args.players} players, {args.seconds} s")
                results.append(measure(spec, args, Path(tmp)))
    finally:
        kill_all_started()
    print("| relay | players | packets | lost | p50 ms | p99 ms | max ms | relay CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['relay']} | {r['players']} | {r['packets']} | {r['lost']} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['max_ms']} | {r['relay_cpu_share']:.0%} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine_facts(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
