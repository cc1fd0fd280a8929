"""The barest uvloop relay the load generator can drive: a calibration point, not a product.

It answers ``V``, ``U``, ``L`` and ``D`` over the UDP control socket (no validation, no
timeouts, no counters, no RTP analysis) and relays with one uvloop datagram endpoint per
port, latching the first source it hears. Run it beside the real relays to see what
uvloop's own per-packet path costs on this machine::

    python benchmarks/run.py --relay ref=/path/to/rtpproxy --relay py=.venv/bin/pyrtpproxy \\
        --relay bare="$PWD/.venv/bin/python benchmarks/bare_relay.py" --sessions 100,250,500

It takes the flags ``run.py`` gives every relay and ignores those it does not need.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

Address = tuple[str, int]


class MediaPort(asyncio.DatagramProtocol):
    """One RTP or RTCP port: latches the first source, sends to the peer port's source."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: Address | None = None
        self.peer: MediaPort | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.remote is None:
            self.remote = addr
        peer = self.peer
        if peer is not None and peer.remote is not None and peer.transport is not None:
            peer.transport.sendto(data, peer.remote)


class BareRelay(asyncio.DatagramProtocol):
    """The control socket and the session table."""

    def __init__(self, host: str, port_min: int) -> None:
        self.host = host
        self.next_port = port_min + (port_min % 2)
        self.legs: dict[str, list[MediaPort]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: Address) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self.pending.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self.pending.discard)

    async def _answer(self, data: bytes, addr: Address) -> None:
        cookie, _, command = data.decode(errors="replace").partition(" ")
        words = command.split()
        reply = "0"
        if words[:1] == ["V"]:
            reply = "20040107"
        elif words[:1] in (["U"], ["L"]) and len(words) > 1:
            port, ports = await self._open_leg()
            if words[0] == "U":
                self.legs[words[1]] = ports
            else:
                for ours, theirs in zip(ports, self.legs.get(words[1], []), strict=False):
                    ours.peer, theirs.peer = theirs, ours
            reply = str(port)
        elif words[:1] == ["D"] and len(words) > 1:
            for media in self.legs.pop(words[1], []):
                if media.transport is not None:
                    media.transport.close()
        if self.transport is not None:
            self.transport.sendto(f"{cookie} {reply}\n".encode(), addr)

    async def _open_leg(self) -> tuple[int, list[MediaPort]]:
        loop = asyncio.get_running_loop()
        port = self.next_port
        self.next_port += 2
        ports = []
        for number in (port, port + 1):
            _, media = await loop.create_datagram_endpoint(
                MediaPort, local_addr=(self.host, number)
            )
            ports.append(media)
        return port, ports


def _option(args: list[str], flag: str, default: str) -> str:
    return args[args.index(flag) + 1] if flag in args[:-1] else default


async def serve(args: list[str]) -> None:
    """Serve the control socket given by ``-s udp:HOST:PORT`` until killed."""
    _kind, host, port = _option(args, "-s", "udp:127.0.0.1:9400").split(":")
    relay = BareRelay(_option(args, "-l", "127.0.0.1"), int(_option(args, "-m", "35000")))
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: relay, local_addr=(host, int(port)))
    await asyncio.Event().wait()


def main() -> None:
    """Entry point: ``-V`` prints a version line, anything else serves."""
    args = sys.argv[1:]
    if "-V" in args:
        print("bare uvloop relay")
        return
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
