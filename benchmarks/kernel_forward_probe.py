"""What would forwarding a latched stream inside the kernel cost? A measurement, not a feature.

In a network namespace of its own (root; ``ip`` and ``nft`` needed), a sender and a receiver
socket on 127.0.0.1 exchange ``--packets`` RTP-sized datagrams twice:

- ``direct``: the sender is connected straight to the receiver;
- ``forwarded``: the sender is connected to a "relay" port nobody listens on, and one nftables
  rule (an output route chain ahead of conntrack) rewrites the ports the way a relay would,
  so the receiver, connected to the relay's other port, accepts the packet.

The difference in the two processes' CPU per packet is what the kernel spends forwarding one
packet; compare it with a relay's CPU per packet from ``run.py``::

    sudo .venv/bin/python benchmarks/kernel_forward_probe.py --packets 100000
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys

HOST = "127.0.0.1"
CALLER, CALLEE = 30000, 30002  # the two parties
RELAY_A, RELAY_B = 20000, 20002  # the relay's ports for each party
PACKET = b"\x80" * 172  # the size of a G.711 20 ms RTP packet
RULES = f"""
table ip probe {{
  chain out {{
    type route hook output priority -300; policy accept;
    ip saddr {HOST} ip daddr {HOST} udp sport {CALLER} udp dport {RELAY_B} notrack counter \
udp sport set {RELAY_A} udp dport set {CALLEE}
  }}
}}
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(packets: int, forwarded: bool) -> tuple[int, float]:
    """Send ``packets`` and read them back; returns (received, CPU µs per packet)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind((HOST, CALLEE))
        receiver.connect((HOST, RELAY_A if forwarded else CALLER))
        sender.bind((HOST, CALLER))
        sender.connect((HOST, RELAY_B if forwarded else CALLEE))
        receiver.setblocking(False)
        received = 0
        start = cpu_seconds()
        for sent in range(1, packets + 1):
            sender.send(PACKET)
            if sent % 64 == 0 or sent == packets:  # drain before the receive buffer fills
                while True:
                    try:
                        receiver.recv(2048)
                    except BlockingIOError:
                        break
                    received += 1
        return received, (cpu_seconds() - start) / packets * 1e6


def inside(packets: int) -> None:
    """Run in the namespace: direct, then with the rule."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for forwarded in (False, True):
        if forwarded:
            subprocess.run(["nft", "-f", "-"], input=RULES.encode(), check=True)
        received, us = measure(packets, forwarded)
        name = "forwarded" if forwarded else "direct"
        print(f"{name:9}  received {received}/{packets}  sender+receiver CPU {us:.2f} µs/packet")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.packets <= 10_000_000:
        parser.error("--packets must be 1..10000000")
    if args.inside:
        inside(args.packets)
        return 0
    namespace = f"pyrtp-probe-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        command = [sys.executable, __file__, "--inside", "--packets", str(args.packets)]
        return subprocess.run(["ip", "netns", "exec", namespace, *command], check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


if __name__ == "__main__":
    sys.exit(main())
