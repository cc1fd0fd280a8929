"""Shared helpers for the pure protocol/engine tests: a fake host probe, an engine
factory that wires the real command processor to a fake clock, and synthetic packets."""

from __future__ import annotations

import random
import struct
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyrtpproxy.control.processor import CommandProcessor
from pyrtpproxy.engine.addresses import AddressPlan, LocalAddress, NotifyTarget
from pyrtpproxy.engine.engine import LOCAL_REQUEST, Engine, EngineConfig, RequestContext
from pyrtpproxy.engine.events import Event, LegClosed, LegOpened, NotifyWanted
from pyrtpproxy.engine.latching import SAFE, Latching
from pyrtpproxy.engine.ports import PortAllocator, port_range
from pyrtpproxy.engine.session import Leg, Stream
from pyrtpproxy.engine.taps import Recording, RecordingPolicy, Tap


class FakeHost:
    """The engine's host probe without sockets: ``busy`` ports refuse to bind; legs
    opened and closed are followed through the engine's events (see :func:`run`)."""

    def __init__(
        self,
        busy: Iterable[int] = (),
        local_hosts: Iterable[str] = (),
        routes: dict[str, str] | None = None,
    ) -> None:
        self.busy = set(busy)
        self.local_hosts = set(local_hosts)
        self.routes = routes or {}
        self.bound: list[int] = []  # every port the probe bound
        self.names = {"localhost": "127.0.0.1"}
        self.unopenable: set[bytes] = set()  # call-ids whose recordings cannot be opened
        self.taps_opened: list[Tap] = []
        self.prompts: dict[bytes, bytes] = {}  # prompt file name -> its bytes
        self.unreadable: set[bytes] = set()  # prompt files that exist but cannot be read
        self.open: dict[int, int] = {}  # id(leg) -> port, from LegOpened/LegClosed
        self.closed = 0

    def try_bind(self, local: LocalAddress, port: int) -> bool:
        if port in self.busy or port + 1 in self.busy:
            return False
        self.bound.append(port)
        return True

    def source_address_for(self, remote: str, ipv6: bool) -> str | None:
        return self.routes.get(remote)

    def is_local_address(self, host: str, ipv6: bool) -> bool:
        return host in self.local_hosts

    def resolve_ipv4(self, host: str) -> str | None:
        parts = host.split(".")
        if len(parts) == 4 and all(p.isdigit() for p in parts):
            return host
        return self.names.get(host)

    def open_tap(self, leg: Leg, tap: Tap) -> bool:
        if isinstance(tap, Recording) and tap.call_id in self.unopenable:
            return False
        self.taps_opened.append(tap)
        return True

    def read_prompt(self, path: bytes) -> bytes | None:
        if path in self.unreadable:
            raise PermissionError(13, "Permission denied")
        return self.prompts.get(path)

    def apply(self, events: Iterable[Event]) -> None:
        """What the media layer would do with the legs."""
        for event in events:
            if isinstance(event, LegOpened):
                self.open[id(event.leg)] = event.port
            elif isinstance(event, LegClosed) and self.open.pop(id(event.leg), None):
                self.closed += 1


@dataclass
class FakeClock:
    """A clock the test sets."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """The real command processor in front of an engine, on a fake clock."""

    processor: CommandProcessor
    clock: FakeClock
    host: FakeHost
    events: list[Event] = field(default_factory=list)

    def take(self) -> list[Event]:
        """Events since the last call."""
        events = list(self.events)
        self.events.clear()
        return events


_HARNESSES: weakref.WeakKeyDictionary[Engine, Harness] = weakref.WeakKeyDictionary()

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
    host: FakeHost | None = None,
    recording: RecordingPolicy | None = None,
    copy_rtcp: bool = True,
    latching: Latching = SAFE,
    overload_threshold: float | None = None,
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
        recording=recording,
        copy_rtcp=copy_rtcp,
        latching=latching,
        overload_threshold=overload_threshold,
    )
    ports = PortAllocator(
        port_range(port_min, port_max), random_order=not sequential, rng=random.Random(seed)
    )
    fake = host or FakeHost()
    engine = Engine(config, ports, fake, rng=random.Random(seed))
    clock = FakeClock()
    seen: list[Event] = []

    def on_events(events: tuple[Event, ...]) -> None:
        fake.apply(events)
        seen.extend(events)

    processor = CommandProcessor(engine, clock, on_events=on_events)
    _HARNESSES[engine] = Harness(processor, clock, fake, seen)
    return engine


def harness(engine: Engine) -> Harness:
    """The processor, clock, host and event log of an engine from :func:`make_engine`."""
    return _HARNESSES[engine]


def _answer(engine: Engine, now: float | None, handle: Callable[[], bytes]) -> bytes:
    h = _HARNESSES[engine]
    if now is not None:
        h.clock.now = now
    line = handle()
    assert line.endswith(b"\n")
    return line[:-1]


def run(
    engine: Engine, data: bytes, now: float | None = None, ctx: RequestContext = LOCAL_REQUEST
) -> bytes:
    """What a stream/unix control socket answers to one command at ``now`` (by default
    the time of the previous command): the reply without its ``\\n``."""
    processor = _HARNESSES[engine].processor
    return _answer(engine, now, lambda: processor.handle(data, ctx))


def run_udp(engine: Engine, data: bytes, now: float | None = None) -> bytes:
    """What a UDP control socket answers to one datagram (reply cache included)."""
    processor = _HARNESSES[engine].processor
    return _answer(engine, now, lambda: processor.handle_datagram(data, LOCAL_REQUEST))


def expire(engine: Engine, now: float) -> list[NotifyWanted]:
    """Run the engine's timer at ``now``; the notifications it asks for."""
    events = engine.handle_timer(now)
    h = _HARNESSES.get(engine)
    if h is not None:
        h.host.apply(events)
        h.events.extend(events)
    return [e for e in events if isinstance(e, NotifyWanted)]


def fast_packet(stream: Stream, now: float, size: int = 172) -> None:
    """A packet relayed without the slow path (the media fast path or the kernel)."""
    stream.note_forwarded(1, size, None, now)


def rtp(seq: int, ssrc: int = 0x11223344, ts: int | None = None, pt: int = 0) -> bytes:
    """An RTP v2 packet with a 160-byte payload."""
    timestamp = seq * 160 if ts is None else ts
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + bytes(160)


def rtcp() -> bytes:
    """A minimal RTCP receiver report (not parseable as RTP by seq/ssrc rules)."""
    return struct.pack("!BBHI", 0x80, 201, 1, 0x11223344)
