"""A hostile neighbour, run as its own process: many control connections that say nothing
useful, and garbage datagrams on media ports, for a bounded time.

    python flood.py UNIX_PATH CUNIX_PATH TCP_PORT SECONDS CONNECTIONS RATE PORT [PORT...]

Opens CONNECTIONS control connections (a third each to the unix:, cunix: and tcp:
sockets; some send half a command and stay) and prints ``open``; then sends RATE garbage
datagrams a second to the PORTs for SECONDS, closes everything and prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sys
import time


def main(argv: list[str]) -> None:
    unix_path, cunix_path, tcp_port, seconds, connections, rate, *ports = argv
    rng = random.Random(5)
    held: list[socket.socket] = []
    refused = 0
    errors: set[str] = set()
    for n in range(int(connections)):
        kind = n % 3
        family = socket.AF_INET if kind == 2 else socket.AF_UNIX
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect(
                ("127.0.0.1", int(tcp_port)) if kind == 2 else (unix_path, cunix_path)[kind]
            )
            if n % 4 == 0:
                sock.send(b"U half-a-comm")  # and never the rest
        except OSError as exc:
            refused += 1
            errors.add(str(exc))
            sock.close()
            continue
        held.append(sock)
    print("open", flush=True)  # the connections are held; the garbage starts now
    deadline = time.monotonic() + float(seconds)
    garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    garbage.setblocking(False)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(64)]
    sent = 0
    started = time.monotonic()
    interval = 1.0 / float(rate)
    while time.monotonic() < deadline:
        due = int((time.monotonic() - started) / interval)
        while sent < due:
            with contextlib.suppress(OSError):
                garbage.sendto(payloads[sent % 64], ("127.0.0.1", int(ports[sent % len(ports)])))
            sent += 1
        time.sleep(0.001)
    for sock in held:
        sock.close()
    report = {"connections": len(held), "refused": refused, "errors": sorted(errors)}
    print(json.dumps({**report, "garbage": sent, "seconds": float(seconds)}))


if __name__ == "__main__":
    main(sys.argv[1:])
