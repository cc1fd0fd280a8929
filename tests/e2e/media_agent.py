"""RTP media agent for one phone namespace of the end-to-end tests.

Server mode (one long-running process per phone namespace):

    media_agent.py serve CTL_PORT RESULT_DIR

listens for commands on UDP 127.0.0.1:CTL_PORT (inside the namespace):

    start ID LOCAL_PORT REMOTE_IP REMOTE_PORT DURATION_MS
        bind 0.0.0.0:LOCAL_PORT (RTP) and LOCAL_PORT+1 (RTCP), send a 20 ms
        PCMU RTP packet to REMOTE_IP:REMOTE_PORT every 20 ms for DURATION_MS
        (0 = until stop) and an RTCP-ish packet to REMOTE_PORT+1 once a second,
        and count what arrives.
    stop ID
        stop sending, wait 200 ms for late packets, write RESULT_DIR/ID.json
        (counts, sources, and "runs": the RTP payload sizes received, in order,
        as [size, packets] runs) and close the sockets.

Client mode (what sipp's <exec command=...> runs):

    media_agent.py ctl CTL_PORT start|stop ARGS...

Only the standard library, no threads: one selector loop.
"""

from __future__ import annotations

import contextlib
import json
import random
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PTIME = 0.02


@dataclass
class Stream:
    ident: str
    local_port: int
    remote: tuple[str, int]
    until: float  # send deadline (monotonic); inf = until stop
    rtp: socket.socket
    rtcp: socket.socket
    ssrc: int = field(default_factory=lambda: random.randrange(1, 2**32))
    seq: int = field(default_factory=lambda: random.randrange(0, 2**16))
    ts: int = field(default_factory=lambda: random.randrange(0, 2**32))
    next_send: float = 0.0
    next_rtcp: float = 0.0
    sent: int = 0
    received: int = 0
    rtcp_received: int = 0
    first_rx: float | None = None
    started: float = field(default_factory=time.time)
    sources: dict[str, int] = field(default_factory=dict)
    ssrcs: set[int] = field(default_factory=set)
    runs: list[list[int]] = field(default_factory=list)  # [payload size, packets] in order
    stopping_at: float | None = None


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    return sock


def serve(ctl_port: int, result_dir: Path) -> None:
    result_dir.mkdir(parents=True, exist_ok=True)
    sel = selectors.DefaultSelector()
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ctl.bind(("127.0.0.1", ctl_port))
    ctl.setblocking(False)
    sel.register(ctl, selectors.EVENT_READ, ("ctl", None))
    streams: dict[str, Stream] = {}
    by_port: dict[int, Stream] = {}

    def close(st: Stream) -> None:
        for s in (st.rtp, st.rtcp):
            sel.unregister(s)
            s.close()
        streams.pop(st.ident, None)
        if by_port.get(st.local_port) is st:
            del by_port[st.local_port]

    def finish(st: Stream) -> None:
        data = {
            "id": st.ident,
            "local_port": st.local_port,
            "remote": list(st.remote),
            "sent": st.sent,
            "received": st.received,
            "rtcp_received": st.rtcp_received,
            "sources": st.sources,
            "ssrcs": len(st.ssrcs),
            "runs": st.runs,
            "first_rx_after": None if st.first_rx is None else st.first_rx - st.started,
        }
        tmp = result_dir / f".{st.ident}.tmp"
        tmp.write_text(json.dumps(data))
        tmp.rename(result_dir / f"{st.ident}.json")
        close(st)

    def command(line: str) -> None:
        parts = line.split()
        if not parts:
            return
        if parts[0] == "start" and len(parts) == 6:
            ident, lport, rip, rport, dur = parts[1:]
            port = int(lport)
            old = by_port.get(port)
            if old is not None:
                close(old)
            now = time.monotonic()
            st = Stream(
                ident=ident,
                local_port=port,
                remote=(rip, int(rport)),
                until=now + int(dur) / 1000 if int(dur) > 0 else float("inf"),
                rtp=_bind(port),
                rtcp=_bind(port + 1),
                next_send=now,
                next_rtcp=now + 0.5,
            )
            sel.register(st.rtp, selectors.EVENT_READ, ("rtp", st))
            sel.register(st.rtcp, selectors.EVENT_READ, ("rtcp", st))
            streams[ident] = st
            by_port[port] = st
        elif parts[0] == "stop" and len(parts) == 2:
            st = streams.get(parts[1])
            if st is not None and st.stopping_at is None:
                st.until = 0.0
                st.stopping_at = time.monotonic() + 0.2
        elif parts[0] == "quit":
            raise SystemExit(0)

    while True:
        now = time.monotonic()
        timeout = 0.5
        for st in list(streams.values()):
            if st.stopping_at is not None:
                if now >= st.stopping_at:
                    finish(st)
                    continue
                timeout = min(timeout, st.stopping_at - now)
                continue
            if now < st.until:
                while st.next_send <= now:
                    pkt = struct.pack("!BBHII", 0x80, 0, st.seq, st.ts, st.ssrc) + b"\xff" * 160
                    try:
                        st.rtp.sendto(pkt, st.remote)
                        st.sent += 1
                    except OSError:
                        pass
                    st.seq = (st.seq + 1) & 0xFFFF
                    st.ts = (st.ts + 160) & 0xFFFFFFFF
                    st.next_send += PTIME
                if st.next_rtcp <= now:
                    rr = struct.pack("!BBHI", 0x80, 201, 1, st.ssrc)
                    with contextlib.suppress(OSError):
                        st.rtcp.sendto(rr, (st.remote[0], st.remote[1] + 1))
                    st.next_rtcp = now + 1.0
                timeout = min(timeout, max(0.0, st.next_send - now))
        for key, _ in sel.select(timeout):
            kind, st = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            while True:
                try:
                    data, addr = sock.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if kind == "ctl":
                    command(data.decode(errors="replace"))
                elif st is not None and kind == "rtp":
                    st.received += 1
                    if st.first_rx is None:
                        st.first_rx = time.time()
                    src = f"{addr[0]}:{addr[1]}"
                    st.sources[src] = st.sources.get(src, 0) + 1
                    if len(data) >= 12:
                        st.ssrcs.add(struct.unpack("!I", data[8:12])[0])
                        size = len(data) - 12
                        if st.runs and st.runs[-1][0] == size:
                            st.runs[-1][1] += 1
                        else:
                            st.runs.append([size, 1])
                elif st is not None:
                    st.rtcp_received += 1


def ctl(port: int, args: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(" ".join(args).encode(), ("127.0.0.1", port))


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "ctl":
        ctl(int(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
