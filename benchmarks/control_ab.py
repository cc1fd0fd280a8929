#!/usr/bin/env python3
"""Paired A/B of the control plane on a noisy machine: relays side by side, rounds interleaved.

``run.py --mode control`` restarts each relay for every repeat and measures it for
seconds at a time, so a burst of steal time or a noisy neighbour lands on one relay and
not the other. Here every relay is started once (pinned to ``--relay-cpu``, its own
control socket and media port range) and one client (pinned to ``--client-cpu``)
alternates short rounds of U+L+D triples between them, in the order A B, B A, ...; each
round of the first relay is paired with the same round of every other one. It prints
each relay's median triples/s and the median (and quartiles) of the paired ratios::

    python benchmarks/control_ab.py --relay base=/work/base/.venv/bin/pyrtpproxy \\
        --relay py=.venv/bin/pyrtpproxy --relay ref=/path/to/rtpproxy --transport unix

Layout A (the client on the other CPU, as a proxy's worker on another core) is the
default; ``--client-cpu 0`` puts the client beside the relay (layout B). Traffic goes to
loopback only; every round is bounded by ``--triples``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from relays import OUT_DIR, ControlSocket, RelaySpec, parse_relays, relay_process

from control import ClientJob, Target, triple_commands

PORTS_PER_RELAY = 10000  # at most; fewer when the relays' ranges would pass port 65535
MIN_PORTS_PER_RELAY = 100


def measure(target: Target, job: ClientJob, round_no: int) -> float:
    """One round: ``job.triples`` triples, each command waiting for its reply; triples/s."""
    client = target.client(f"r{round_no}")
    try:
        started = time.perf_counter()
        for n in range(job.triples):
            for command in triple_commands(job, job.callid(f"{round_no}-{n}")):
                reply = client.ask(command)
                if reply is None or reply.startswith("E"):
                    raise SystemExit(f"{command!r} -> {reply!r}")
        return job.triples / (time.perf_counter() - started)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", action="append", required=True, metavar="NAME=COMMAND")
    parser.add_argument("--transport", choices=("unix", "udp"), default="unix")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--triples", type=int, default=1000, help="per round (default 1000)")
    parser.add_argument("--relay-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--ctl-port", type=int, default=23400)
    parser.add_argument("--port-min", type=int, default=20000)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    specs: list[RelaySpec] = parse_relays(args.relay)
    if len(specs) < 2:
        parser.error("give two relays or more")
    span = min(PORTS_PER_RELAY, (65536 - args.port_min) // len(specs)) & ~1
    if span < MIN_PORTS_PER_RELAY:
        parser.error(f"--port-min {args.port_min} leaves {span} ports per relay; lower it")
    rates: dict[str, list[float]] = {spec.name: [] for spec in specs}
    with contextlib.ExitStack() as stack:
        targets: dict[str, tuple[Target, ClientJob]] = {}
        for i, spec in enumerate(specs):
            path = Path(tempfile.gettempdir()) / f"control-ab-{os.getpid()}-{i}.sock"
            sock = ControlSocket(args.transport, args.ctl_port + i, str(path))
            target = Target(sock, args.timeout)
            lo = args.port_min + i * span
            logfile = OUT_DIR / "logs" / f"control-ab-{spec.name}.log"
            stack.enter_context(
                relay_process(
                    spec, sock, lo, lo + span - 2, args.relay_cpu, logfile, 10.0,
                    probe=target.probe,
                )
            )  # fmt: skip
            job = ClientJob(0, f"ab{os.getpid()}{i}", args.triples, 0.0, 0, None, spec.tag_suffix)
            targets[spec.name] = (target, job)
        os.sched_setaffinity(0, {args.client_cpu})
        for round_no in range(args.rounds):
            order = specs if round_no % 2 == 0 else specs[::-1]
            for spec in order:
                target, job = targets[spec.name]
                rates[spec.name].append(measure(target, job, round_no))
    print(f"{args.transport}, client on CPU {args.client_cpu}, relays on CPU {args.relay_cpu}, "
          f"{args.rounds} rounds of {args.triples} triples")  # fmt: skip
    for name, values in rates.items():
        print(f"  {name:10s} median {statistics.median(values):7.0f} triples/s")
    names = list(rates)
    for i, base in enumerate(names):
        for name in names[i + 1 :]:
            ratios = sorted(v / b for v, b in zip(rates[name], rates[base], strict=True))
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            print(f"  {name}/{base}: median {statistics.median(ratios):.3f} (quartiles "
                  f"{q1:.3f}-{q3:.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
