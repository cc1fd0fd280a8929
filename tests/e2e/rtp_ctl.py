"""Send one command to an rtpproxy UDP control socket and print the reply.

    rtp_ctl.py HOST PORT COMMAND...

Run inside the relay's namespace (ip netns exec). The cookie is stripped.
"""

from __future__ import annotations

import os
import socket
import sys


def main() -> None:
    host, port, command = sys.argv[1], int(sys.argv[2]), " ".join(sys.argv[3:])
    cookie = f"e2e{os.getpid()}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        for _ in range(3):
            sock.sendto(f"{cookie} {command}".encode(), (host, port))
            try:
                data = sock.recv(65536).decode(errors="replace")
            except TimeoutError:
                continue
            if data.startswith(cookie + " "):
                sys.stdout.write(data[len(cookie) + 1 :])
                return
    sys.exit("no reply")


if __name__ == "__main__":
    main()
