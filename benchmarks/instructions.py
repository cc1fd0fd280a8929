#!/usr/bin/env python3
"""User-space instructions per U+L+D triple and per relayed RTP packet, under cachegrind.

On a noisy machine a few per cent of CPU cannot be seen in seconds of wall-clock time (the
paired medians of ``control_ab.py`` have quartiles of +-10 %), but the instructions a
relay executes for the same commands are the same from run to run (within about 0.6 %).
Each relay runs under ``valgrind --tool=cachegrind --cache-sim=no`` twice, once for the
smaller of ``--triples`` (``--packets``) and once for the larger, after the same warm-up;
the difference of the two instruction totals over the difference of the counts is the cost
of one triple (one packet), start-up, warm-up and shutdown cancelling out. The client
waits for every reply, so the relay runs the same code path in both runs.

What it counts is what the relay's threads execute in user space: the kernel's work (the
system calls themselves) is not in it, so it is the measure of a change to Python code.
The reference rtpproxy refuses the benchmark's ``-L`` under valgrind (which keeps
descriptors of its own). Example, with the interpreter that an operator would run beside
the development one::

    python benchmarks/instructions.py --relay before=/work/before/.venv/bin/pyrtpproxy \\
        --relay py=.venv/bin/pyrtpproxy --relay pydeb=/tmp/venv-deb/bin/pyrtpproxy

Needs ``valgrind`` (Debian: ``apt-get install valgrind``). Traffic goes to loopback only;
every run is bounded by its counts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

from relays import (
    OUT_DIR,
    ControlSocket,
    RelaySpec,
    UdpClient,
    log,
    parse_relays,
    relay_process,
)

from control import ClientJob, triple_commands

VALGRIND = ("valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null")
WARMUP = 100  # triples (and packets each way) before the counted ones, in both runs
STOP_GRACE = 300.0  # seconds for a relay under valgrind to shut down and print its total
_TOTAL = re.compile(r"I\s+refs:\s+([\d,]+)")


CLIENT_TIMEOUT = 60.0  # seconds: a relay under valgrind is slow, not absent


def _ask(client: UdpClient, command: str) -> str:
    reply = client.ask(command)
    if reply is None or reply.startswith("E"):
        raise RuntimeError(f"{command!r} -> {reply}")
    return reply


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + bytes(160)


def triples(client: UdpClient, job: ClientJob, count: int) -> None:
    """``WARMUP`` and then ``count`` U+L+D triples, each command waiting for its reply."""
    for label, number in (("w", WARMUP), ("c", count)):
        for i in range(number):
            for command in triple_commands(job, job.callid(f"{label}{i}")):
                _ask(client, command)


def media(client: UdpClient, job: ClientJob, count: int) -> None:
    """One call between two local sockets; ``count`` packets each way after the warm-up,
    one each way at a time, each waited for at the other end."""
    ends = []
    for _ in range(2):
        end = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        end.bind(("127.0.0.1", 0))
        end.settimeout(CLIENT_TIMEOUT)
        ends.append(end)
    caller, callee = ends
    ft, tt = f"ft{job.tag_suffix}", f"tt{job.tag_suffix}"
    call = job.callid("media")
    offer = _ask(client, f"U {call} 127.0.0.1 {caller.getsockname()[1]} {ft}")
    answer = _ask(client, f"L {call} 127.0.0.1 {callee.getsockname()[1]} {ft} {tt}")
    to_callee = ("127.0.0.1", int(answer.split()[0]))  # where the caller sends
    to_caller = ("127.0.0.1", int(offer.split()[0]))
    for seq in range(WARMUP + count):
        caller.sendto(_rtp(seq, 1), to_callee)
        callee.sendto(_rtp(seq, 2), to_caller)
        callee.recv(2048)
        caller.recv(2048)
    _ask(client, f"D {call} {ft} {tt}")
    for end in ends:
        end.close()


WORKLOADS = {"control": triples, "media": media}
UNITS_PER_COUNT = {"control": 1, "media": 2}  # a triple; a packet each way


def instructions(spec: RelaySpec, port: int, port_lo: int, what: str, count: int) -> int:
    """The relay's user-space instruction total for one run of the ``what`` workload."""
    logs = OUT_DIR / "logs"
    valgrind_log = logs / f"instructions-{spec.name}.valgrind"
    sock = ControlSocket("udp", port)
    prefix = [*VALGRIND, f"--log-file={valgrind_log}"]
    logfile = logs / f"instructions-{spec.name}.log"
    with relay_process(
        spec, sock, port_lo, port_lo + 998, None, logfile, 300.0, prefix=prefix
    ) as proc:
        client = UdpClient(port, CLIENT_TIMEOUT, "i")
        job = ClientJob(0, "i", count, 0.0, WARMUP, None, spec.tag_suffix)
        WORKLOADS[what](client, job, count)
        client.close()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE)
    found = _TOTAL.search(valgrind_log.read_text())
    if found is None:
        raise RuntimeError(f"{spec.name}: no instruction total in {valgrind_log}")
    return int(found.group(1).replace(",", ""))


def per_unit(spec: RelaySpec, port: int, port_lo: int, counts: tuple[int, int], what: str) -> float:
    """Instructions per triple (``control``) or per relayed packet (``media``)."""
    totals = []
    for count in counts:
        started = time.monotonic()
        totals.append(instructions(spec, port, port_lo, what, count))
        log(f"{spec.name} {what} {count}: {totals[-1]} ({time.monotonic() - started:.0f} s)")
    return (totals[1] - totals[0]) / ((counts[1] - counts[0]) * UNITS_PER_COUNT[what])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", action="append", required=True, metavar="NAME=COMMAND")
    parser.add_argument("--what", default="control,media", help="control, media or both")
    parser.add_argument("--triples", default="200,1200", help="the two triple counts")
    parser.add_argument("--packets", default="500,2500", help="the two packet counts each way")
    parser.add_argument("--ctl-port", type=int, default=23600)
    parser.add_argument("--port-min", type=int, default=21000)
    args = parser.parse_args(argv)
    if subprocess.run(["valgrind", "--version"], capture_output=True, check=False).returncode:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    specs = parse_relays(args.relay)
    whats = [w for w in args.what.split(",") if w]
    if not set(whats) <= set(WORKLOADS):
        parser.error("--what takes control and media")
    counts: dict[str, tuple[int, int]] = {}
    for what, text in (("control", args.triples), ("media", args.packets)):
        small, _, large = text.partition(",")
        if not (small.isdigit() and large.isdigit() and int(small) < int(large)):
            parser.error(f"{what} counts are two numbers, the smaller first: {text!r}")
        counts[what] = (int(small), int(large))
    results: dict[str, dict[str, float]] = {}
    for i, spec in enumerate(specs):
        results[spec.name] = {
            what: per_unit(spec, args.ctl_port + i, args.port_min + 1000 * i, counts[what], what)
            for what in whats
        }
    print("user-space instructions (cachegrind): per U+L+D triple, per relayed RTP packet")
    for spec in specs:
        print(f"  {spec.name}: [{spec.version()}]")
    first = specs[0].name
    for what in whats:
        unit = "triple" if what == "control" else "packet"
        for name, figures in results.items():
            ratio = figures[what] / results[first][what]
            print(f"  {what:8s} {name:10s} {figures[what]:10.0f} per {unit}  {ratio:.3f}x {first}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
