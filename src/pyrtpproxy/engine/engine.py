"""Command execution against the session table: U/L/D/X, sub-commands, timers.

Pure: time comes in as ``now``, results go out as values. :meth:`Engine.execute` returns
a :class:`~pyrtpproxy.protocol.replies.Reply` and the events the command caused;
:meth:`Engine.receive` judges a packet on the media slow path; :meth:`Engine.get_timer`
and :meth:`Engine.handle_timer` run the idle and setup timeouts. The only calls out are
the host probes (:class:`~pyrtpproxy.engine.ports.HostProbe`), because a U/L reply must
carry a port that is already bound.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import NamedTuple

from ..protocol import capabilities, replies
from ..protocol.commands import (
    AddressSpec,
    Command,
    Copy,
    Delete,
    DeleteAll,
    GetCounters,
    Info,
    Interface,
    Introspect,
    Play,
    Query,
    Record,
    StopPlay,
    StopRecord,
    SubCommand,
    SubDelete,
    SubLookup,
    SubSet,
    Update,
    UpdateModifiers,
    Version,
    VersionFeature,
)
from ..protocol.errors import ErrorCode, ProtocolError
from ..protocol.replies import OK, Reply
from . import queries
from .addresses import (
    AddressPlan,
    Endpoint,
    LocalAddress,
    MediaAddress,
    NotifyTarget,
    resolve_media_address,
)
from .counters import Counters, Snapshot
from .events import (
    EndReason,
    Event,
    LegClosed,
    LegOpened,
    NotifyTargetUnknown,
    NotifyWanted,
    Outbox,
    OverloadChanged,
    PlayerCreated,
    PlayerEnded,
    PlayerStarted,
    PortsReleased,
    ResizerChanged,
    SessionCompleted,
    SessionCreated,
    SessionEnded,
    TapStarted,
    TapStopped,
    TosChanged,
)
from .latching import SAFE, Latching
from .overload import OverloadGuard
from .persist import Restored, SessionRestorer, SessionState, export_session
from .playback import PlayEnd, Player, Players
from .ports import HostProbe, PortAllocator, PortsExhausted
from .resizer import Resizer
from .session import Leg, Session, Side, Stream
from .table import SessionTable
from .taps import (
    BadCopyTarget,
    Direction,
    Recording,
    RecordingPolicy,
    Tap,
    UdpCopy,
    creating_tag,
    leg_recording,
    split_udp_target,
)
from .timers import Deadlines


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
    recording: RecordingPolicy | None = None  # None: no -r, nothing can be recorded
    copy_rtcp: bool = True  # -R: neither recordings nor copies carry RTCP
    latching: Latching = SAFE  # --latching, --latching-window
    overload_threshold: float | None = None  # --overload_prot; None: off


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where a command came from: ``source_host`` fills in ``%%CC_SELF%%``."""

    source_host: str = "127.0.0.1"


LOCAL_REQUEST = RequestContext()
DONE = Reply(OK)  # the answer of every command that just did what it was asked


class Outcome(NamedTuple):
    """What a command produced: the reply and the events it caused."""

    reply: Reply
    events: tuple[Event, ...]


class Forwarding(NamedTuple):
    """What the slow path decided for one packet."""

    dest: Endpoint | None  # where to send it out of the peer stream's socket; None: drop
    settled: bool  # further packets from this source need not come back here
    events: tuple[Event, ...]
    accepted: bool  # the leg took it (a tap records it even when it cannot be relayed)
    # None: send (and tap) the packet itself; else exactly these, in order (z<ms>)
    packets: tuple[bytes, ...] | None = None


class PlayOutput(NamedTuple):
    """What the players did by ``now``: packets to send and the events of those that
    ended."""

    sends: list[tuple[Stream, bytes]]  # (out of this stream's socket, to its remote)
    events: tuple[Event, ...]


class Engine:
    """Executes parsed commands, judges slow-path packets, expires idle sessions and
    paces prompts."""

    def __init__(
        self,
        config: EngineConfig,
        ports: PortAllocator,
        probe: HostProbe,
        counters: Counters | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.ports = ports
        self.probe = probe
        self.table = SessionTable()
        self.counters = counters or Counters()
        self.timers = Deadlines(config.ttl, config.setup_ttl, config.independent_timers)
        self.outbox = Outbox(self.counters.count)
        self.draining = False  # SIGHUP: refuse new sessions
        self.overload = OverloadGuard(config.overload_threshold)
        self.players = Players()
        self._rng = rng or random.Random()  # players' SSRC, sequence and timestamp
        self._resolved: dict[str, str] = {}  # advertised DNS name -> its address now
        bridged = config.addresses.bridge_mode and not config.bridge_symmetric
        self._default_asymmetric = config.force_asymmetric or bridged  # a leg's without a/s

    # --- entry points ------------------------------------------------------------------

    def execute(self, command: Command, now: float, ctx: RequestContext = LOCAL_REQUEST) -> Outcome:
        """Run one command. A failure raises :class:`ProtocolError` and leaves nothing
        half-done; its events (ports given back, say) are in :meth:`take_events`."""
        reply = self._dispatch(command, now, ctx)
        return Outcome(reply, self.outbox.take())

    def take_events(self) -> tuple[Event, ...]:
        """Events not yet handed out (after a command raised)."""
        return self.outbox.take()

    def receive(
        self,
        stream: Stream,
        packet: bytes,
        src: tuple[str, int] | tuple[str, int, int, int],
        now: float,
    ) -> Forwarding:
        """The media slow path: latching, counting, and where the packet goes (and, for
        a re-packetized stream, which packets: none, some, or several)."""
        resizer = stream.resizer
        packets: tuple[bytes, ...] | None = None
        if resizer is None:
            before = stream.accepted
            dest = stream.receive(packet, src, now)
            settled = dest is not None and stream.settled(src)
            accepted = stream.accepted != before
        elif stream.admit(packet, src, now):
            resized = resizer.push(packet, now)
            packets = resized.packets
            dest = stream.relay(len(packets), sum(map(len, packets)))
            relayed = resized.emitted if dest is not None else 0
            self.counters.resized(resized.taken, relayed, resized.discarded)
            settled, accepted = False, True  # a re-packetized stream never settles
        else:
            dest, settled, accepted = None, False, False
        self._start_waiting_player(stream, now)
        return Forwarding(dest, settled, self.outbox.take(), accepted, packets)

    def _start_waiting_player(self, stream: Stream, now: float) -> None:
        player = stream.leg.player
        if (
            player is not None
            and not player.started
            and stream is stream.leg.rtp
            and stream.remote is not None
        ):
            # a prompt waits for its listener's address: this packet brought it (§3.3;
            # under --latching safe, once the learning window let it latch)
            self.players.start(player, now)
            self.outbox.emit(PlayerStarted(player))

    def get_timer(self) -> float | None:
        """The next moment :meth:`handle_timer` has work (None: no session)."""
        return self.timers.next_deadline()

    def handle_timer(self, now: float) -> tuple[Event, ...]:
        """Expire the sessions whose idle or setup timer has run out by ``now``."""
        for session in self.timers.due(now):
            if session.notify_target is not None and session.notify_tag is not None:
                self.outbox.emit(
                    NotifyWanted(
                        target=session.notify_target,
                        tag=session.notify_tag,
                        source_host=session.notify_source or "127.0.0.1",
                        call_id=session.call_id,
                    )
                )
            self._destroy(session, now, EndReason.TIMEOUT)
        return self.outbox.take()

    def report_load(self, load: float) -> tuple[Event, ...]:
        """The shell's event loop was busy this share of the time lately (0.0 .. 1.0):
        with ``--overload_prot``, new sessions get E98 while it is too high."""
        if self.overload.update(load):
            self.outbox.emit(OverloadChanged(self.overload.active, load))
        return self.outbox.take()

    def get_play_timer(self) -> float | None:
        """When the next prompt packet is due (None: no player is sending)."""
        return self.players.next_deadline()

    def handle_play_timer(self, now: float) -> PlayOutput:
        """The prompt packets due by ``now``; players at the end of their prompt end."""
        played = self.players.run_due(now)
        for player in played.finished:
            self._end_player(player, PlayEnd.FINISHED)
        self.counters.played(len(played.packets))
        sends = [(player.leg.rtp, packet) for player, packet in played.packets]
        return PlayOutput(sends, self.outbox.take())

    def delete_all(self, now: float) -> tuple[Event, ...]:
        """Destroy every session without notifications (``X``, and shutdown)."""
        self._delete_all(now)
        return self.outbox.take()

    def set_advertised(self, name: str, address: str) -> None:
        """An advertised DNS name (``-A``) resolves to ``address`` now: replies carry it."""
        self._resolved[name] = address

    def snapshot(self, now: float) -> Snapshot:
        """Every counter, live sessions included."""
        return self.counters.snapshot(self.table, now)

    def export_sessions(self, now: float) -> list[SessionState]:
        """Every live session as a value, times relative to ``now`` (``--state-file``)."""
        return [export_session(session, now) for session in self.table]

    def restore(self, states: list[SessionState], now: float) -> Restored:
        """Rebuild exported sessions (after a restart), with the events a U would have
        caused for their legs and taps; those whose ports cannot be had are skipped."""
        restorer = SessionRestorer(
            self.table,
            self.timers,
            self.ports,
            self.probe,
            self.outbox,
            self.config.addresses.all(),
            self._match_notify_target,
            self.config.latching,
        )
        return restorer.restore(states, now)

    # --- dispatch ----------------------------------------------------------------------

    def _dispatch(self, command: Command, now: float, ctx: RequestContext) -> Reply:
        match command:
            case Update():
                return self._update(command, now, ctx)
            case Delete():
                return self._delete(command, now)
            case Query():
                found = self._find(command.call_id, command.from_tag, command.to_tag)
                body = queries.query(self.timers, command, found, now)
                return Reply(body, self._run_subcommands(command.subcommands, *found, now))
            case GetCounters():
                return Reply(queries.get_counters(self.snapshot(now), command))
            case Info():
                return Reply(queries.info(self.snapshot(now), len(self.table), command))
            case Introspect():
                return Reply(queries.introspect(list(self.table), self.timers, command, now))
            case Version():
                return Reply(replies.Version(capabilities.BASE_VERSION))
            case VersionFeature():
                notify = bool(self.config.notify_targets)
                return Reply(replies.Flag(capabilities.supports(command.date, notify)))
            case DeleteAll():
                self._delete_all(now)
                return DONE
            case Record():
                return self._record(command)
            case StopRecord():
                return self._stop_record(command)
            case Copy():
                return self._copy(command)
            case Play() | StopPlay():
                return self._play(command, now)
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, "unhandled command")

    def _find(self, call_id: bytes, from_tag: bytes, to_tag: bytes | None) -> tuple[Session, Side]:
        found = self.table.find(call_id, from_tag, to_tag)
        if found is None:
            raise ProtocolError(ErrorCode.NO_SESSION, "no such session")
        return found

    # --- U / L -------------------------------------------------------------------------

    def _update(self, cmd: Update, now: float, ctx: RequestContext) -> Reply:
        if cmd.subcommands:
            self._check_subcommands(cmd.subcommands)
        mods = cmd.modifiers
        if cmd.notify_socket is not None and not self.config.notify_targets:
            raise ProtocolError(ErrorCode.NOTIFY_DISABLED, "notify requested but no -n configured")
        if mods.ipv6:
            self.config.addresses.pick(True, Interface.INTERNAL)  # E36 if no IPv6 address
        media = resolve_media_address(cmd.addr, cmd.port, mods.ipv6)
        found = self.table.find(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if found is None:
            if cmd.lookup_only:
                return Reply(replies.NOT_FOUND)
            session, side = self._create(cmd, now), Side.B
        else:
            session, side = found
        created = not session.created
        if cmd.lookup_only:
            reply_leg, addr_leg = session.legs[side], session.legs[1 - side]
        else:
            reply_leg, addr_leg = session.legs[1 - side], session.legs[side]
        try:
            self._apply_update(session, reply_leg, addr_leg, mods, media, now, created)
        except ProtocolError:
            if created:
                self._destroy(session, now, EndReason.FAILED)
            raise
        if created:
            self.table.add(session)
            session.created = True
            self.outbox.emit(SessionCreated(session))
            policy = self.config.recording
            if policy is not None and policy.record_all:
                for record_side in (Side.B, Side.A):
                    self._start_recording(session, record_side, single_file=policy.pcap)
        self.timers.file(session)
        if not cmd.lookup_only:
            self._set_notify(session, cmd, ctx)
        reply = self._port_reply(reply_leg)
        if not cmd.subcommands:
            return Reply(reply)
        return Reply(
            reply, self._run_subcommands(cmd.subcommands, session, side, now, addr_leg.side)
        )

    def _create(self, cmd: Update, now: float) -> Session:
        if self.draining:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "shutting down, no new sessions")
        if self.overload.active:
            self.counters.relay.sessions_refused_overload += 1
            raise ProtocolError(ErrorCode.OVERLOADED, "overloaded, no new sessions")
        session = Session(cmd.call_id, cmd.from_tag, now, self.outbox, self.config.latching)
        mods = cmd.modifiers
        a, b = session.legs
        plan = self.config.addresses
        if mods.interfaces:
            interfaces = mods.interfaces + (Interface.INTERNAL,) * (2 - len(mods.interfaces))
            # the first i/e is the offerer's side (leg B), the second the answerer's (leg A)
            b.local = plan.pick(mods.ipv6, interfaces[0])
            a.local = plan.pick(mods.ipv6, interfaces[1])
        else:
            a.local = b.local = plan.pick(mods.ipv6, Interface.INTERNAL)
        return session

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
        if not session.complete and session.legs[0].port and session.legs[1].port:
            session.complete = True
            self.outbox.emit(SessionCompleted(session))
        if mods.asymmetric is not None:
            addr_leg.set_asymmetric(mods.asymmetric)
        elif created or not addr_leg.asymmetric:
            addr_leg.set_asymmetric(self._default_asymmetric)
        if media.hold:
            addr_leg.on_hold = True
        elif media.endpoint is not None:
            addr_leg.on_hold = False
            addr_leg.signal(media.endpoint, now)
        addr_leg.codecs = mods.codecs  # each U/L of a party replaces (or clears) its list
        reply_leg.ptime_ms = mods.repacketize_ms  # P … session's ptime towards the other
        if mods.weak:
            reply_leg.weak = True
        else:
            session.strong = True
        self._repacketize(addr_leg, mods.repacketize_ms)
        session.reset_timer(now, self.timers.full(session))

    def _repacketize(self, leg: Leg, target_ms: int | None) -> None:
        """``z<ms>``: the RTP ``leg`` receives (its party's) goes on in packets of
        ``target_ms``; a U/L without ``z`` stops that (media-features.md §4.1)."""
        stream = leg.rtp
        resizer = stream.resizer
        if target_ms is None:
            if resizer is not None:
                self._stop_resizer(stream)
                self.outbox.emit(ResizerChanged(leg, None))
            return
        if resizer is None:
            stream.resizer = Resizer(target_ms)
        elif resizer.target_ms != target_ms:
            resizer.retarget(target_ms)
        else:
            return
        self.outbox.emit(ResizerChanged(leg, target_ms))

    def _stop_resizer(self, stream: Stream) -> None:
        """Remove the stream's re-packetizer; what it held counts as discarded."""
        resizer = stream.resizer
        if resizer is not None:
            stream.resizer = None
            self.counters.resized(0, 0, resizer.discard())

    def _explicit_local(self, mods: UpdateModifiers) -> LocalAddress:
        if mods.local_address is not None:
            return self._local_from_spec(mods.local_address)
        assert mods.remote_address is not None
        remote = mods.remote_address.text
        ipv6 = ":" in remote
        host = self.probe.source_address_for(remote, ipv6) if _numeric(remote) else None
        if host is None:
            raise ProtocolError(ErrorCode.NO_ROUTE_TO_REMOTE, f"no local address towards {remote}")
        return self._configured(host) or LocalAddress(host, ipv6=ipv6)

    def _local_from_spec(self, spec: AddressSpec) -> LocalAddress:
        if spec.is_label:
            for local in self.config.addresses.all():
                if local.label == spec.text:
                    return local
            raise ProtocolError(ErrorCode.NOT_A_LOCAL_ADDRESS, f"unknown address label {spec.text}")
        configured = self._configured(spec.text)
        if configured is not None:
            return configured
        family_v6 = ":" in spec.text
        if _numeric(spec.text) and self.probe.is_local_address(spec.text, family_v6):
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
        if old:
            self._release(leg)
        try:
            # ``n`` asks for a new port: never hand the old one straight back
            leg.port = self.ports.allocate(
                lambda port: port != old and self.probe.try_bind(local, port)
            )
        except PortsExhausted:
            code = ErrorCode.NO_PORT_FOR_SESSION if new_session else ErrorCode.NO_PORT_FOR_LEG
            raise ProtocolError(code, "no free media port") from None
        self.outbox.emit(LegOpened(leg, local, leg.port))

    def _release(self, leg: Leg) -> None:
        """Give the leg's port back; the media layer closes its sockets."""
        assert leg.local is not None
        self.ports.release(leg.port)
        self.outbox.emit(LegClosed(leg, leg.local, leg.port))
        leg.port = 0

    def _set_notify(self, session: Session, cmd: Update, ctx: RequestContext) -> None:
        session.notify_target = session.notify_tag = None
        if cmd.notify_socket is None or cmd.notify_tag is None:
            return
        target = self._match_notify_target(cmd.notify_socket)
        if target is None:
            self.outbox.emit(NotifyTargetUnknown(session, cmd.notify_socket))
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

    # --- sub-commands ------------------------------------------------------------------

    def _check_subcommands(self, subs: tuple[SubCommand, ...]) -> None:
        """Before the main command runs: a sub-command that would fail on its address
        (E37) or family (E36) fails the whole command with E3, and nothing is done."""
        for sub in subs:
            if isinstance(sub, SubLookup):
                try:
                    resolve_media_address(sub.addr, sub.port, sub.modifiers.ipv6)
                    self.config.addresses.pick(sub.modifiers.ipv6, Interface.INTERNAL)
                except ProtocolError as exc:
                    raise ProtocolError(ErrorCode.BAD_SUBCOMMAND, exc.detail) from exc

    def _run_subcommands(
        self,
        subs: tuple[SubCommand, ...],
        session: Session,
        side: Side,
        now: float,
        this: Side | None = None,
    ) -> tuple[replies.SubResult, ...]:
        """Run ``&&`` sub-commands in order, stopping at the first failure. ``this`` is
        the leg facing the party whose address the main command carried (``S`` acts on
        it, ``Sr`` on the other one); an ``L`` sub-command swaps the roles."""
        if not subs:
            return ()
        facing = side if this is None else this
        results: list[replies.SubResult] = []
        for sub in subs:
            if session.ended:
                results.append(replies.SubFailure(replies.SUBCOMMAND_FAILED))
                break
            try:
                match sub:
                    case SubDelete():
                        self._delete_one(session, side, sub.weak, now)
                        results.append(OK)
                    case SubLookup():
                        media = resolve_media_address(sub.addr, sub.port, sub.modifiers.ipv6)
                        # the other party's answer: reply leg is tag1's (B side of a U forward)
                        reply_leg, addr_leg = session.legs[facing], session.legs[1 - facing]
                        self._apply_update(
                            session, reply_leg, addr_leg, sub.modifiers, media, now, False
                        )
                        self.timers.file(session)
                        results.append(self._port_reply(reply_leg))
                        facing = Side(1 - facing)
                    case SubSet():
                        chosen = session.legs[1 - facing if sub.other_leg else facing]
                        result = self._set_leg(session, chosen, sub, now)
                        results.append(result)
                        if isinstance(result, replies.SubFailure):
                            break
            except ProtocolError as exc:
                results.append(replies.SubFailure(exc.code.value))
                break
        return tuple(results)

    def _set_leg(self, session: Session, leg: Leg, sub: SubSet, now: float) -> replies.SubResult:
        """``&& S ttl=N``: the leg's timer becomes N seconds from now and stays N (both
        legs share it unless ``-i``); ``&& S tos=N``: the leg's sockets' IPv4 TOS."""
        if sub.ttl is not None:
            legs = (leg,) if self.config.independent_timers else session.legs
            for chosen in legs:
                chosen.ttl = sub.ttl
                chosen.reset_timer(now, sub.ttl)
            self.timers.file(session)
            return OK
        assert sub.tos is not None
        if leg.local is not None and leg.local.ipv6:
            return replies.SubFailure(replies.SUBCOMMAND_FAILED)  # TOS is IPv4 only
        self.outbox.emit(TosChanged(leg, sub.tos))
        return OK

    # --- D / X -------------------------------------------------------------------------

    def _delete(self, cmd: Delete, now: float) -> Reply:
        matches = self.table.find_all(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if not matches:
            raise ProtocolError(ErrorCode.NO_SESSION, "no such session")
        for session, side in matches:
            self._delete_one(session, side, cmd.weak, now)
        return DONE

    def _delete_one(self, session: Session, side: Side, weak: bool, now: float) -> None:
        if weak:
            session.legs[side].weak = False
        else:
            session.strong = False
        if not session.persistent:
            self._destroy(session, now, EndReason.DELETED)

    def _delete_all(self, now: float) -> None:
        for session in list(self.table):
            self._destroy(session, now, EndReason.DELETED)

    def _destroy(self, session: Session, now: float, reason: EndReason) -> None:
        if session.ended:
            return
        session.ended = True
        self.table.remove(session)
        self.timers.forget(session)
        for leg in session.legs:
            if leg.tap is not None:
                self._detach(leg)
            if leg.player is not None:
                self._stop_player(leg, PlayEnd.SESSION_ENDED)
            if leg.rtp.resizer is not None:
                self._stop_resizer(leg.rtp)
            if leg.port:
                self._release(leg)
        self.counters.retire(session, now)
        self.outbox.emit(SessionEnded(session, reason))

    def _port_reply(self, leg: Leg) -> replies.PortReply:
        assert leg.local is not None
        address = leg.local.reply_address
        if address is not None:
            address = self._resolved.get(address, address)
        return replies.PortReply(leg.port, address, leg.local.ipv6)

    # --- R / N / C ----------------------------------------------------------------------

    def _record(self, cmd: Record) -> Reply:
        """``R[s]``: a recorder on the chosen leg of every matching session (§1.2)."""
        policy = self.config.recording
        if policy is None:
            raise ProtocolError(ErrorCode.NO_SESSION, "nothing can be recorded without -r")
        matches = self.table.find_all(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if not matches:
            raise ProtocolError(ErrorCode.NO_SESSION, "no such session")
        single = policy.pcap and (cmd.single_file or policy.both_directions)
        succeeded = False
        for session, side in matches:
            sides = (Side.B, Side.A) if policy.both_directions else (side,)
            for chosen in sides:
                succeeded |= self._start_recording(session, chosen, single)
        if not succeeded:
            raise ProtocolError(ErrorCode.NO_SESSION, "no leg could be recorded")
        return DONE

    def _start_recording(self, session: Session, side: Side, single_file: bool) -> bool:
        """Record one leg. A leg that already has a tap counts as recording, except in
        single-file mode, where it is a failure (rtpproxy's rule)."""
        leg = session.legs[side]
        if leg.tap is not None:
            return not single_file
        policy = self.config.recording
        assert policy is not None
        direction = Direction.ORIGINATOR if side is Side.B else Direction.ANSWERER
        tap = leg_recording(session.call_id, session.tag, direction, single_file, policy)
        return self._attach(leg, tap)

    def _stop_record(self, cmd: StopRecord) -> Reply:
        """``N[a]``: release the chosen leg's tap (both legs with ``a``), §1.3."""
        matches = self.table.find_all(cmd.call_id, cmd.from_tag, cmd.to_tag)
        stopped = False
        for session, side in matches:
            legs = session.legs if cmd.both else (session.legs[side],)
            for leg in legs:
                stopped |= self._detach(leg)
        if not stopped:
            raise ProtocolError(ErrorCode.NO_SESSION, "nothing was recorded")
        return DONE

    def _copy(self, cmd: Copy) -> Reply:
        """``C[s][p]``: copy a leg's media to ``udp:HOST:PORT`` or record it to a file."""
        session, side = self._find(cmd.call_id, cmd.from_tag, cmd.to_tag)
        leg = session.legs[side]
        rtcp = self.config.copy_rtcp
        try:
            udp = split_udp_target(cmd.target, rtcp)
        except BadCopyTarget as exc:
            raise ProtocolError(ErrorCode.COPY_FAILED, str(exc)) from None
        if udp is None:
            return self._copy_to_file(cmd, leg)
        host, port = udp
        address = self.probe.resolve_ipv4(host)
        if address is None:
            raise ProtocolError(ErrorCode.COPY_FAILED, f"cannot resolve {host}")
        source = self.probe.source_address_for(address, False)
        if source is None:
            raise ProtocolError(ErrorCode.COPY_FAILED, f"no local address towards {address}")
        local = self._configured(source) or LocalAddress(source)
        try:
            local_port = self.ports.allocate(lambda p: self.probe.try_bind(local, p))
        except PortsExhausted:
            raise ProtocolError(ErrorCode.COPY_FAILED, "no free port for the copy") from None
        reply = replies.PortReply(local_port, local.reply_address or source)
        taken = leg.tap is not None  # the slot is taken: nothing is copied (rtpproxy's rule)
        copy = UdpCopy(Endpoint(address, port), local, local_port, rtcp)
        if taken or not self._attach(leg, copy):
            self.ports.release(local_port)
            self.outbox.emit(PortsReleased(local, local_port))
            if not taken:
                raise ProtocolError(ErrorCode.COPY_FAILED, "the copy's sockets could not be opened")
        return Reply(reply if cmd.reply_port else OK)

    def _copy_to_file(self, cmd: Copy, leg: Leg) -> Reply:
        if cmd.reply_port:
            raise ProtocolError(ErrorCode.COPY_FAILED, "p needs a udp: target")
        if leg.tap is not None:
            # the slot is taken: "0", nothing opened, -r not asked for; rtpproxy counts it
            # as a failed command (ncmds_errs), unlike a udp: copy on a taken slot
            return Reply(replies.NOT_FOUND)
        policy = self.config.recording
        if policy is None:
            raise ProtocolError(ErrorCode.COPY_FAILED, "a file copy needs -r")
        tap = Recording(
            call_id=cmd.call_id,
            tag=creating_tag(leg.session.tag),
            direction=None,
            name=cmd.target,
            single_file=cmd.single_file and policy.pcap,
            pcap=policy.pcap,
            rtcp=policy.rtcp,
        )
        if not self._attach(leg, tap):
            raise ProtocolError(ErrorCode.COPY_FAILED, "the file could not be opened")
        return DONE

    def _attach(self, leg: Leg, tap: Tap) -> bool:
        """Give ``leg`` its tap if the host can open it; its streams leave the fast path."""
        if not self.probe.open_tap(leg, tap):
            return False
        leg.tap = tap
        self.outbox.emit(TapStarted(leg, tap))
        return True

    def _detach(self, leg: Leg) -> bool:
        """End ``leg``'s tap, if it has one; a copy gives its port pair back."""
        tap = leg.tap
        if tap is None:
            return False
        leg.tap = None
        self.outbox.emit(TapStopped(leg, tap))
        if isinstance(tap, UdpCopy):
            self.ports.release(tap.port)
        return True

    # --- P / S -------------------------------------------------------------------------

    def _play(self, cmd: Play | StopPlay, now: float) -> Reply:
        """``P[count]``/``S`` (media-features.md §3): the prompt goes to tag1's party, out
        of the chosen leg's RTP socket; every P first stops what plays there."""
        session, side = self._find(cmd.call_id, cmd.from_tag, cmd.to_tag)
        leg = session.legs[side]
        self._stop_player(leg, PlayEnd.STOPPED)
        if isinstance(cmd, StopPlay):
            return DONE
        ptime: int | None = None
        codecs = cmd.codecs
        if codecs == b"session":
            if leg.codecs is None:
                raise ProtocolError(ErrorCode.INVALID_MODIFIER, "no codec list stored for this leg")
            codecs, ptime = leg.codecs, leg.ptime_ms
        if cmd.count == 0:
            return DONE
        for token in codecs.split(b","):
            if not token.isdigit():
                raise ProtocolError(ErrorCode.PLAY_FAILED, f"invalid codec list {codecs!r}")
            payload_type = int(token)
            path = b"%s.%d" % (cmd.prompt, payload_type)
            try:
                prompt = self.probe.read_prompt(path)
            except OSError as exc:
                raise ProtocolError(
                    ErrorCode.PLAY_FAILED, f"cannot read {path!r}: {exc.strerror or exc}"
                ) from None
            if prompt is None:
                continue  # no such file: try the next payload type
            player = Player(leg, prompt, payload_type, cmd.count, ptime, self._rng)
            leg.player = player
            self.players.add(player, now if leg.rtp.remote is not None else None)
            self.outbox.emit(PlayerCreated(player, path))
            return DONE
        raise ProtocolError(ErrorCode.PLAY_FAILED, f"no prompt file {cmd.prompt!r}.<{codecs!r}>")

    def _stop_player(self, leg: Leg, reason: PlayEnd) -> None:
        player = leg.player
        if player is not None:
            self.players.remove(player)
            self._end_player(player, reason)

    def _end_player(self, player: Player, reason: PlayEnd) -> None:
        """The other party's RTP reaches the listener again from its next packet on (that
        direction stayed off the fast path while the player ran)."""
        player.leg.player = None
        self.outbox.emit(PlayerEnded(player, reason))


def _numeric(host: str) -> bool:
    """A numeric IPv4/IPv6 address (``l``/``r`` never trigger name lookups)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
