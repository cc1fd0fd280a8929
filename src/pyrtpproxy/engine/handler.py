"""Command execution against the session table (pure: time comes in as ``now``).

The media side plugs in through :class:`MediaOps`, so the engine can be tested without
sockets and the relay can bind ports synchronously while a command runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..protocol import capabilities
from ..protocol.commands import (
    AddressSpec,
    Command,
    Copy,
    Delete,
    DeleteAll,
    GetCounters,
    Info,
    Interface,
    Play,
    Query,
    Record,
    StopPlay,
    StopRecord,
    SubCommand,
    SubDelete,
    SubLookup,
    Update,
    UpdateModifiers,
    Version,
    VersionFeature,
)
from ..protocol.errors import ErrorCode, ProtocolError
from .addresses import (
    AddressPlan,
    Endpoint,
    LocalAddress,
    MediaAddress,
    NotifyTarget,
    resolve_media_address,
)
from .counters import COUNTER_NAMES, PACKET_COUNTERS, RTPA_COUNTERS, GlobalCounters, format_value
from .ports import PortAllocator, PortsExhausted
from .session import Leg, Session, Side
from .table import SessionTable

MAX_REPLY = 1024
SUBCOMMAND_FAILED = b"-1"


class MediaOps(Protocol):
    """What the engine needs from the media layer."""

    def open_leg(self, leg: Leg, local: LocalAddress, port: int) -> bool:
        """Bind RTP on ``port`` and RTCP on ``port + 1``; False if either is in use."""

    def close_leg(self, leg: Leg) -> None:
        """Close the leg's sockets (it may have none); its counters are final afterwards."""

    def refresh_counters(self) -> None:
        """Bring stream counters up to date with packets the media layer did not see
        one by one (kernel-forwarded ones)."""

    def source_address_for(self, remote: str, ipv6: bool) -> str | None:
        """The local address the OS would use to reach ``remote`` (``r`` modifier)."""

    def is_local_address(self, host: str, ipv6: bool) -> bool:
        """Whether media sockets can bind to ``host`` (``l`` modifier)."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The part of the configuration the engine uses."""

    ttl: int = 60
    setup_ttl: int = 60
    independent_timers: bool = False
    force_asymmetric: bool = False
    bridge_symmetric: bool = False
    addresses: AddressPlan = field(default_factory=AddressPlan)
    notify_targets: tuple[NotifyTarget, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where a command came from: ``source_host`` fills in ``%%CC_SELF%%``."""

    source_host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Notification:
    """A timeout notification to deliver: ``tag + b"\\n"`` to ``target``."""

    target: NotifyTarget
    tag: bytes
    source_host: str
    call_id: bytes


EventSink = Callable[[str, Session, str], None]


def _no_events(kind: str, session: Session, detail: str) -> None:
    return None


class Engine:
    """Executes parsed commands and runs the idle/setup timer sweep."""

    def __init__(
        self,
        config: EngineConfig,
        ports: PortAllocator,
        media: MediaOps,
        on_event: EventSink = _no_events,
    ) -> None:
        self.config = config
        self.ports = ports
        self.media = media
        self.table = SessionTable()
        self.counters = GlobalCounters()
        self.draining = False  # SIGHUP: refuse new sessions
        self.bytes_relayed_ended = 0  # not an rtpproxy G counter; see bytes_relayed()
        self._on_event = on_event
        self._last_rcvd = 0

    # --- entry points ------------------------------------------------------------------

    def execute(self, command: Command, now: float, ctx: RequestContext | None = None) -> bytes:
        """Run one command; returns the reply body. Raises :class:`ProtocolError`."""
        ctx = ctx or RequestContext()
        match command:
            case Update():
                return self._update(command, now, ctx)
            case Delete():
                return self._delete(command, now)
            case Query():
                return self._query(command, now)
            case GetCounters():
                return self._get_counters(command)
            case Info():
                return self._info(command)
            case Version():
                return capabilities.BASE_VERSION
            case VersionFeature():
                supported = capabilities.supports(command.date, bool(self.config.notify_targets))
                return b"1" if supported else b"0"
            case DeleteAll():
                self.delete_all(now)
                return b"0"
            case Record() | StopRecord():
                return self._record(command)
            case Copy():
                return self._copy(command)
            case Play() | StopPlay():
                return self._play(command)
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, "unhandled command")

    def delete_all(self, now: float) -> None:
        """Destroy every session without notifications (``X``, and shutdown)."""
        for session in list(self.table):
            self._destroy(session, now, "deleted")

    def sweep(self, now: float) -> list[Notification]:
        """Once a second: refresh timers from media activity, expire idle sessions."""
        notifications: list[Notification] = []
        self.media.refresh_counters()
        for session in list(self.table):
            self._tick(session)
            if session.ttl <= 0:
                self.counters.nsess_timeout += 1
                note = self._notification(session)
                if note is not None:
                    notifications.append(note)
                self._destroy(session, now, "timeout")
                continue
            for leg in session.legs:
                leg.ttl -= 1
            session.invalidate_fast_path()
        rcvd = self._live_packet_counts()[0] + self.counters.npkts_rcvd
        self.counters.pps_in = float(max(0, rcvd - self._last_rcvd))
        self._last_rcvd = rcvd
        return notifications

    # --- U / L -------------------------------------------------------------------------

    def _update(self, cmd: Update, now: float, ctx: RequestContext) -> bytes:
        mods = cmd.modifiers
        if cmd.notify_socket is not None and not self.config.notify_targets:
            raise ProtocolError(ErrorCode.NOTIFY_DISABLED, "notify requested but no -n configured")
        if mods.ipv6:
            self.config.addresses.pick(True, Interface.INTERNAL)  # E36 if no IPv6 address
        media = resolve_media_address(cmd.addr, cmd.port, mods.ipv6)
        found = self.table.find(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if found is None:
            if cmd.lookup_only:
                return b"0"
            session, side = self._create(cmd, now), Side.B
            created = True
        else:
            (session, side), created = found, False
        if cmd.lookup_only:
            reply_leg, addr_leg = session.legs[side], session.legs[1 - side]
        else:
            reply_leg, addr_leg = session.legs[1 - side], session.legs[side]
        try:
            self._apply_update(session, reply_leg, addr_leg, mods, media, now, created)
        except ProtocolError:
            if created:
                self._discard(session)
            raise
        if created:
            self.table.add(session)
            self.counters.nsess_created += 1
            self._on_event("created", session, "")
        if not cmd.lookup_only:
            self._set_notify(session, cmd, ctx)
        reply = self._port_reply(reply_leg)
        return reply + self._run_subcommands(cmd.subcommands, session, side, now)

    def _create(self, cmd: Update, now: float) -> Session:
        if self.draining:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "shutting down, no new sessions")
        session = Session(cmd.call_id, cmd.from_tag, now)
        mods = cmd.modifiers
        interfaces = mods.interfaces + (Interface.INTERNAL,) * (2 - len(mods.interfaces))
        a, b = session.legs
        # the first i/e is the offerer's side (leg B), the second the answerer's (leg A)
        b.local = self.config.addresses.pick(mods.ipv6, interfaces[0])
        a.local = self.config.addresses.pick(mods.ipv6, interfaces[1])
        session.reset_ttl(self.config.setup_ttl)
        return session

    def _discard(self, session: Session) -> None:
        """Undo a session whose creating U failed: it never existed for the counters."""
        for leg in session.legs:
            self.media.close_leg(leg)
            if leg.port:
                self.ports.release(leg.port)
        self._on_event("failed", session, "")

    def _apply_update(
        self,
        session: Session,
        reply_leg: Leg,
        addr_leg: Leg,
        mods: UpdateModifiers,
        media: MediaAddress,
        now: float,
        created: bool,
    ) -> None:
        if reply_leg.port == 0 or mods.new_port:
            if mods.local_address is not None or mods.remote_address is not None:
                reply_leg.local = self._explicit_local(mods)
            self._allocate(reply_leg, new_session=created)
        if not session.complete and all(leg.port for leg in session.legs):
            session.complete = True
            self.counters.nsess_complete += 1
            self._on_event("completed", session, "")
        if mods.asymmetric is not None:
            addr_leg.asymmetric = mods.asymmetric
        elif created or not addr_leg.asymmetric:
            addr_leg.asymmetric = self._default_asymmetric
        if media.hold:
            addr_leg.on_hold = True
        elif media.endpoint is not None:
            addr_leg.on_hold = False
            addr_leg.signal(Endpoint(*media.endpoint), now)
        if mods.codecs is not None:
            addr_leg.codecs = mods.codecs
        if mods.weak:
            reply_leg.weak = True
        else:
            session.strong = True
        session.reset_ttl(self.config.ttl if session.complete else self.config.setup_ttl)

    @property
    def _default_asymmetric(self) -> bool:
        bridged = self.config.addresses.bridge_mode and not self.config.bridge_symmetric
        return self.config.force_asymmetric or bridged

    def _explicit_local(self, mods: UpdateModifiers) -> LocalAddress:
        if mods.local_address is not None:
            return self._local_from_spec(mods.local_address, mods.ipv6)
        assert mods.remote_address is not None
        remote = mods.remote_address.text
        ipv6 = ":" in remote
        host = self.media.source_address_for(remote, ipv6) if _numeric(remote) else None
        if host is None:
            raise ProtocolError(ErrorCode.NO_ROUTE_TO_REMOTE, f"no local address towards {remote}")
        return self._configured(host) or LocalAddress(host, ipv6=ipv6)

    def _local_from_spec(self, spec: AddressSpec, ipv6: bool) -> LocalAddress:
        if spec.is_label:
            for local in self.config.addresses.all():
                if local.label == spec.text:
                    return local
            raise ProtocolError(ErrorCode.NOT_A_LOCAL_ADDRESS, f"unknown address label {spec.text}")
        configured = self._configured(spec.text)
        if configured is not None:
            return configured
        family_v6 = ":" in spec.text
        if _numeric(spec.text) and self.media.is_local_address(spec.text, family_v6):
            return LocalAddress(spec.text, ipv6=family_v6)
        raise ProtocolError(ErrorCode.NOT_A_LOCAL_ADDRESS, f"{spec.text} is not a local address")

    def _configured(self, host: str) -> LocalAddress | None:
        for local in self.config.addresses.all():
            if host in (local.host, local.advertised):
                return local
        return None

    def _allocate(self, leg: Leg, new_session: bool) -> None:
        assert leg.local is not None
        local = leg.local
        old = leg.port
        if leg.port:
            self.media.close_leg(leg)
            self.ports.release(leg.port)
            leg.port = 0
        try:
            # ``n`` asks for a new port: never hand the old one straight back
            leg.port = self.ports.allocate(
                lambda port: port != old and self.media.open_leg(leg, local, port)
            )
        except PortsExhausted:
            code = ErrorCode.NO_PORT_FOR_SESSION if new_session else ErrorCode.NO_PORT_FOR_LEG
            raise ProtocolError(code, "no free media port") from None
        for stream in leg.streams:
            stream.set_remote(stream.remote)  # new socket: drop shortcuts through the old one

    @staticmethod
    def _port_reply(leg: Leg) -> bytes:
        assert leg.local is not None
        address = leg.local.reply_address
        if address is None:
            return b"%d" % leg.port
        if leg.local.ipv6:
            return b"%d %s 6" % (leg.port, address.encode())
        return b"%d %s" % (leg.port, address.encode())

    def _set_notify(self, session: Session, cmd: Update, ctx: RequestContext) -> None:
        session.notify_target = session.notify_tag = None
        if cmd.notify_socket is None or cmd.notify_tag is None:
            return
        target = self._match_notify_target(cmd.notify_socket)
        if target is None:
            self._on_event("notify-unknown", session, cmd.notify_socket.decode("latin-1"))
            return
        session.notify_target = target
        session.notify_tag = cmd.notify_tag
        session.notify_source = ctx.source_host

    def _match_notify_target(self, name: bytes) -> NotifyTarget | None:
        """The configured ``-n`` target that ``name`` designates."""
        for target in self.config.notify_targets:
            if target.matches(name):
                return target
        return None

    def _notification(self, session: Session) -> Notification | None:
        if session.notify_target is None or session.notify_tag is None:
            return None
        return Notification(
            target=session.notify_target,
            tag=session.notify_tag,
            source_host=session.notify_source or "127.0.0.1",
            call_id=session.call_id,
        )

    # --- sub-commands ------------------------------------------------------------------

    def _run_subcommands(
        self, subs: tuple[SubCommand, ...], session: Session, side: Side, now: float
    ) -> bytes:
        results: list[bytes] = []
        for sub in subs:
            if session not in self.table:
                results.append(SUBCOMMAND_FAILED)  # an earlier && D removed it
                break
            try:
                match sub:
                    case SubDelete():
                        self._delete_one(session, side, sub.weak, now)
                        results.append(b"0")
                    case SubLookup():
                        media = resolve_media_address(sub.addr, sub.port, sub.modifiers.ipv6)
                        # the other party's answer: reply leg is tag1's (B side of a U forward)
                        reply_leg, addr_leg = session.legs[side], session.legs[1 - side]
                        self._apply_update(
                            session, reply_leg, addr_leg, sub.modifiers, media, now, False
                        )
                        results.append(self._port_reply(reply_leg))
            except ProtocolError as exc:
                results.append(b"-%d" % exc.code.value)
                break
        if all(r == b"0" for r in results):
            return b""  # like rtpproxy: plain successes add nothing to the reply
        return b"".join(b" && " + r for r in results)

    # --- D / X -------------------------------------------------------------------------

    def _delete(self, cmd: Delete, now: float) -> bytes:
        matches = self.table.find_all(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if not matches:
            raise ProtocolError(ErrorCode.NO_SESSION, "no such session")
        for session, side in matches:
            self._delete_one(session, side, cmd.weak, now)
        return b"0"

    def _delete_one(self, session: Session, side: Side, weak: bool, now: float) -> None:
        if weak:
            session.legs[side].weak = False
        else:
            session.strong = False
        if not session.persistent:
            self._destroy(session, now, "deleted")

    def _destroy(self, session: Session, now: float, reason: str) -> None:
        if session not in self.table:
            return
        self.table.remove(session)
        for leg in session.legs:  # first: closing brings in the last kernel-forwarded counts
            self.media.close_leg(leg)
            if leg.port:
                self.ports.release(leg.port)
        counters = self.counters
        counters.nsess_destroyed += 1
        counters.total_duration += max(0.0, now - session.created_at)
        for rtcp, (none_name, oneway_name) in (
            (False, ("nsess_nortp", "nsess_owrtp")),
            (True, ("nsess_nortcp", "nsess_owrtcp")),
        ):
            if not session.complete:
                continue  # rtpproxy judges media only of sessions that had both legs
            directions = sum(
                1 for leg in session.legs if (leg.rtcp if rtcp else leg.rtp).packets_in
            )
            if directions == 0:
                setattr(counters, none_name, getattr(counters, none_name) + 1)
            elif directions == 1:
                setattr(counters, oneway_name, getattr(counters, oneway_name) + 1)
        rcvd, relayed, discard = _packet_counts(session)
        counters.npkts_rcvd += rcvd
        counters.npkts_relayed += relayed
        counters.npkts_discard += discard
        self.bytes_relayed_ended += sum(s.bytes_relayed for s in session.streams())
        for name, value in zip(RTPA_COUNTERS, _rtpa_counts(session), strict=True):
            setattr(counters, name, getattr(counters, name) + value)
        session.invalidate_fast_path()
        self._on_event(reason, session, "")

    # --- timers ------------------------------------------------------------------------

    def _tick(self, session: Session) -> None:
        ttl = self.config.ttl if session.complete else self.config.setup_ttl
        active = [leg.had_activity() for leg in session.legs]
        if not session.complete:
            return
        if self.config.independent_timers:
            for leg, was_active in zip(session.legs, active, strict=True):
                if was_active:
                    leg.ttl = ttl
        elif any(active):
            session.reset_ttl(ttl)

    # --- Q / G / I ---------------------------------------------------------------------

    def _query(self, cmd: Query, now: float) -> bytes:
        found = self.table.find(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if found is None:
            raise ProtocolError(ErrorCode.NO_SESSION, "no such session")
        if cmd.bad_modifier:
            raise ProtocolError(ErrorCode.UNKNOWN_QUERY_MODIFIER, "bad Q modifier")
        session, side = found
        self.media.refresh_counters()
        self._tick(session)  # packets since the last sweep have already reset the timer
        values = _session_values(session, side)
        names = cmd.counters or _DEFAULT_QUERY
        parts: list[bytes] = []
        for name in names:
            value = values.get(name)
            if value is None:
                raise ProtocolError(ErrorCode.UNKNOWN_QUERY_COUNTER, f"unknown counter {name!r}")
            parts.append(name + b"=" + value if cmd.verbose else value)
        reply = b" ".join(parts)
        if len(reply) >= MAX_REPLY - 64:
            raise ProtocolError(ErrorCode.QUERY_REPLY_TOO_LONG, "Q reply too long")
        return reply + self._run_subcommands(cmd.subcommands, session, side, now)

    def counter_values(self) -> dict[str, int | float]:
        """Every global counter, live sessions' packets included."""
        self.media.refresh_counters()
        values: dict[str, int | float] = {
            name: getattr(self.counters, name) for name in COUNTER_NAMES
        }
        for name, live in zip(PACKET_COUNTERS, self._live_packet_counts(), strict=True):
            values[name] = int(values[name]) + live
        # rtpa_* are summed when streams end, as in rtpproxy (Q shows live streams)
        return values

    def bytes_relayed(self) -> int:
        """UDP payload bytes relayed since start, live sessions included."""
        live = sum(s.bytes_relayed for session in self.table for s in session.streams())
        return self.bytes_relayed_ended + live

    def _live_packet_counts(self) -> tuple[int, int, int]:
        rcvd = relayed = discard = 0
        for session in self.table:
            r, rl, d = _packet_counts(session)
            rcvd, relayed, discard = rcvd + r, relayed + rl, discard + d
        return rcvd, relayed, discard

    def _get_counters(self, cmd: GetCounters) -> bytes:
        values = self.counter_values()
        parts: list[bytes] = []
        for raw in cmd.names:
            name = raw.decode("latin-1")
            if name not in values:
                raise ProtocolError(ErrorCode.UNKNOWN_COUNTER, f"unknown counter {name}")
            value = format_value(values[name])
            parts.append(raw + b"=" + value if cmd.verbose else value)
        reply = b" ".join(parts)
        if len(reply) >= MAX_REPLY - 64:
            raise ProtocolError(ErrorCode.COUNTERS_REPLY_TOO_LONG, "G reply too long")
        return reply

    def _info(self, cmd: Info) -> bytes:
        values = self.counter_values()
        active = len(self.table)
        lines = [
            b"sessions created: %d" % values["nsess_created"],
            b"active sessions: %d" % active,
            b"active streams: %d" % (2 * active),
            b"packets received: %d" % values["npkts_rcvd"],
            b"packets transmitted: %d"
            % (int(values["npkts_relayed"]) + int(values["npkts_played"])),
        ]
        if cmd.load:
            lines.append(b"average load: 0.000000")
        return b"\n".join(lines)

    # --- R / N / C / P / S: validated; media side not available in this build ----------

    def _record(self, cmd: Record | StopRecord) -> bytes:
        # Like rtpproxy without -r: nothing can be recorded, so nothing matches (E50).
        raise ProtocolError(ErrorCode.NO_SESSION, "recording is not available")

    def _copy(self, cmd: Copy) -> bytes:
        if self.table.find(cmd.call_id, cmd.from_tag, cmd.to_tag) is None:
            raise ProtocolError(ErrorCode.NO_SESSION, "no such session")
        raise ProtocolError(ErrorCode.COPY_FAILED, "copy not available")

    def _play(self, cmd: Play | StopPlay) -> bytes:
        found = self.table.find(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if found is None:
            raise ProtocolError(ErrorCode.NO_SESSION, "no such session")
        if isinstance(cmd, StopPlay) or cmd.count == 0:
            return b"0"  # S, and P with a repeat count of 0, stop playing
        session, side = found
        if cmd.codecs == b"session" and session.legs[side].codecs is None:
            raise ProtocolError(ErrorCode.INVALID_MODIFIER, "no codec list stored for this leg")
        raise ProtocolError(ErrorCode.PLAY_FAILED, "prompt cannot be played")


_DEFAULT_QUERY = (b"ttl", b"npkts_ina", b"npkts_ino", b"nrelayed", b"ndropped")


def _numeric(host: str) -> bool:
    """A numeric IPv4/IPv6 address (``l``/``r`` never trigger name lookups)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _packet_counts(session: Session) -> tuple[int, int, int]:
    rcvd = relayed = discard = 0
    for stream in session.streams():
        rcvd += stream.packets_in + stream.ignored
        relayed += stream.packets_relayed
        discard += stream.ignored + stream.incomplete
    return rcvd, relayed, discard


def _rtpa_counts(session: Session) -> tuple[int, int, int, int, int]:
    sent = rcvd = dups = lost = perrs = 0
    for leg in session.legs:
        analysis = leg.rtp.analysis
        if analysis is None:
            continue
        sent += analysis.expected
        rcvd += analysis.received
        dups += analysis.dups
        lost += analysis.lost
        perrs += analysis.parse_errors
    return sent, rcvd, dups, lost, perrs


def _session_values(session: Session, side: Side) -> dict[bytes, bytes]:
    mine, other = session.legs[side].rtp, session.legs[1 - side].rtp
    analysis = mine.analysis
    assert analysis is not None
    ints: dict[bytes, int] = {
        b"ttl": max(0, session.ttl),
        b"npkts_ina": mine.packets_in,
        b"npkts_ino": other.packets_in,
        b"nrelayed": mine.packets_relayed + other.packets_relayed,
        b"ndropped": mine.dropped + other.dropped,
        b"rtpa_nsent": analysis.expected,
        b"rtpa_nrcvd": analysis.received,
        b"rtpa_ndups": analysis.dups,
        b"rtpa_nlost": analysis.lost,
        b"rtpa_perrs": analysis.parse_errors,
    }
    floats: dict[bytes, float] = {
        b"longest_ipi": analysis.longest_ipi,
        b"rtpa_jlast": analysis.jitter_last,
        b"rtpa_jmax": analysis.jitter_max,
        b"rtpa_javg": analysis.jitter_avg,
    }
    values = {k: format_value(v) for k, v in ints.items()}
    values.update({k: format_value(v) for k, v in floats.items()})
    return values
