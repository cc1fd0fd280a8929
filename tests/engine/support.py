"""Shared helpers for the pure protocol/engine tests: a fake media layer, an engine
factory, a control-layer stand-in and synthetic RTP packets."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable

from pyrtpproxy.engine.addresses import AddressPlan, LocalAddress, NotifyTarget
from pyrtpproxy.engine.handler import Engine, EngineConfig, RequestContext
from pyrtpproxy.engine.ports import PortAllocator, port_range
from pyrtpproxy.engine.session import Leg
from pyrtpproxy.protocol.errors import ErrorCode, ProtocolError
from pyrtpproxy.protocol.parse import parse, split_cookie

MAX_COMMAND = 8191  # what the control layer reads of one command


class FakeMedia:
    """MediaOps without sockets: remembers which legs are open; ``busy`` ports refuse."""

    def __init__(
        self,
        busy: Iterable[int] = (),
        local_hosts: Iterable[str] = (),
        routes: dict[str, str] | None = None,
    ) -> None:
        self.busy = set(busy)
        self.local_hosts = set(local_hosts)
        self.routes = routes or {}
        self.open: dict[int, int] = {}  # id(leg) -> port
        self.opened: list[int] = []
        self.closed = 0

    def open_leg(self, leg: Leg, local: LocalAddress, port: int) -> bool:
        if port in self.busy or port + 1 in self.busy:
            return False
        self.open[id(leg)] = port
        self.opened.append(port)
        return True

    def close_leg(self, leg: Leg) -> None:
        if self.open.pop(id(leg), None) is not None:
            self.closed += 1

    def refresh_counters(self) -> None:
        return None

    def source_address_for(self, remote: str, ipv6: bool) -> str | None:
        return self.routes.get(remote)

    def is_local_address(self, host: str, ipv6: bool) -> bool:
        return host in self.local_hosts


V4_LOCAL = AddressPlan(ipv4=(LocalAddress("127.0.0.1"),))
WILDCARD = AddressPlan()


def make_engine(
    *,
    addresses: AddressPlan = V4_LOCAL,
    ttl: int = 60,
    setup_ttl: int | None = None,
    independent_timers: bool = False,
    force_asymmetric: bool = False,
    bridge_symmetric: bool = False,
    notify_targets: tuple[str, ...] = (),
    port_min: int = 35000,
    port_max: int = 65000,
    sequential: bool = False,
    seed: int = 1,
    media: FakeMedia | None = None,
) -> Engine:
    """An engine as the CLI would build it for the given options."""
    config = EngineConfig(
        ttl=ttl,
        setup_ttl=ttl if setup_ttl is None else setup_ttl,
        independent_timers=independent_timers,
        force_asymmetric=force_asymmetric,
        bridge_symmetric=bridge_symmetric,
        addresses=addresses,
        notify_targets=tuple(NotifyTarget.parse(t) for t in notify_targets),
    )
    ports = PortAllocator(
        port_range(port_min, port_max), random_order=not sequential, rng=random.Random(seed)
    )
    return Engine(config, ports, media or FakeMedia())


def run(engine: Engine, data: bytes, now: float = 0.0, ctx: RequestContext | None = None) -> bytes:
    """What a stream/unix control socket does with one command: the reply body (no ``\\n``)."""
    try:
        command = parse(data[:MAX_COMMAND], bridge_mode=engine.config.addresses.bridge_mode)
        return engine.execute(command, now, ctx)
    except ProtocolError as exc:
        return exc.code.wire


def run_udp(engine: Engine, data: bytes, now: float = 0.0) -> bytes:
    """What a UDP control socket does with one datagram (no reply cache)."""
    cookie, command = split_cookie(data[:MAX_COMMAND])
    if cookie is None:
        return ErrorCode.SYNTAX.wire
    return cookie + b" " + run(engine, command, now)


def rtp(seq: int, ssrc: int = 0x11223344, ts: int | None = None, pt: int = 0) -> bytes:
    """An RTP v2 packet with a 160-byte payload."""
    timestamp = seq * 160 if ts is None else ts
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + bytes(160)


def rtcp() -> bytes:
    """A minimal RTCP receiver report (not parseable as RTP by seq/ssrc rules)."""
    return struct.pack("!BBHI", 0x80, 201, 1, 0x11223344)


Runner = Callable[[Engine, bytes], bytes]
