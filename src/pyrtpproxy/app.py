"""Builds the relay from a :class:`Config` and runs it until a signal says stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import logging.handlers
import os
import platform
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Config, ConfigError, ControlKind, KernelMode
from .control.notify import Notifier
from .control.processor import CommandProcessor
from .control.server import ControlServer
from .engine.counters import Counters
from .engine.engine import Engine, EngineConfig
from .engine.events import (
    EndReason,
    Event,
    Latched,
    LearningStarted,
    NotifyTargetUnknown,
    NotifyWanted,
    OverloadChanged,
    PlayerCreated,
    PlayerEnded,
    PlayerStarted,
    SessionCompleted,
    SessionCreated,
    SessionEnded,
    SourceRefused,
)
from .engine.overload import LoadWindow
from .engine.persist import SessionState
from .engine.ports import PortAllocator
from .engine.session import Session, Stream
from .engine.taps import RecordingPolicy
from .handover import (
    MEDIA,
    PROTOCOL,
    TRANSFER_TIMEOUT,
    HandoverError,
    Inherited,
    confirm,
    receive_message,
    sd_notify,
    send_message,
    send_sockets,
    socket_path,
    take_over,
)
from .media.kernel import (
    KernelForwarder,
    MissingCapability,
    NftError,
    default_table_name,
    open_forwarder,
)
from .media.record import RecordDirs
from .media.relay import RESERVED_FDS, SOCKETS_PER_LEG, MediaConfig, MediaRelay
from .names import AdvertisedNames, Resolver, system_resolver
from .net import probe_bind
from .state import JournalWriter, StateLock, load, without_gc

if TYPE_CHECKING:
    from .observe.metrics import RelayMetrics

log = logging.getLogger("pyrtpproxy")

Handler = Callable[[Any], None]

SKIPPED_LOGGED = 20  # sessions a restore names one by one before it only counts
HANDOVER_DRAIN = 0.05  # seconds a handing-over relay serves the commands it accepted
LOCK_RETRY = 0.05  # seconds between tries for the journal's lock after a takeover
SESSION_SOCKETS = 2 * SOCKETS_PER_LEG  # two legs
HOUSEKEEPING_INTERVAL = 1.0  # seconds between kernel counter reads and recording flushes
LOAD_SAMPLE_INTERVAL = 0.25  # --overload_prot: seconds between two looks at the loop's load
LOAD_WINDOW = 2.0  # seconds of load the decision is made on


def kernel_refusal(exc: NftError) -> str:
    """Why ``--kernel-forward on`` cannot start, and what to do about it."""
    hint = (
        " (run as root, or grant CAP_NET_ADMIN; --kernel-forward auto falls back to user space)"
        if isinstance(exc, MissingCapability)
        else ""
    )
    return f"--kernel-forward on: cannot use nftables: {exc}{hint}"


def _unscheduled(callback: Callable[[], None]) -> None:
    return None


# The event loop's timers have millisecond resolution (a wakeup comes up to half a
# millisecond early): a prompt packet due within this much of a wakeup goes out in it
# rather than in a wakeup of its own a moment later.
PLAY_TIMER_SLACK = 0.0005


def prepare(config: Config, resolver: Resolver = system_resolver) -> None:
    """The start-up's checks and changes outside the process, before daemonising so that a
    failure still reaches the terminal: make the runtime directory, check that every
    media address can be bound, and with ``--kernel-forward on`` that the table can be
    created (and deleted again). Raises :class:`ConfigError` naming the flag."""
    if config.runtime_dir is not None:
        try:
            os.makedirs(config.runtime_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the runtime directory {config.runtime_dir}: {exc.strerror}"
            ) from None
    for name, result in AdvertisedNames(config.advertised_names, resolver).lookup().items():
        if isinstance(result, OSError):
            raise ConfigError(
                f"-A {name}: cannot resolve the advertised name: {result.strerror or result}"
            )
    for local in config.addresses.all():
        try:
            probe_bind(local.bind_host)
        except OSError as exc:
            flag = "-6" if local.ipv6 else "-l"
            raise ConfigError(
                f"{flag} {local.bind_host}: cannot use this listen address: {exc.strerror}"
            ) from None
    if config.kernel_forward is KernelMode.ON:
        table = config.nft_table or default_table_name()
        try:
            open_forwarder(table, config.tos, _unscheduled, Counters(), lambda: 0.0).stop()
        except NftError as exc:
            raise ConfigError(kernel_refusal(exc)) from None


def setup_logging(config: Config, daemon: bool) -> None:
    """stderr in the foreground, syslog when daemonised (rtpproxy's behaviour)."""
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    if daemon:
        facility_name = (config.log_facility or "LOG_DAEMON").removeprefix("LOG_").lower()
        facility = logging.handlers.SysLogHandler.facility_names.get(
            facility_name, logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler = logging.handlers.SysLogHandler(address="/dev/log", facility=facility)
        handler.setFormatter(
            logging.Formatter("pyrtpproxy[%(process)d]: %(levelname)s: %(message)s")
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(config.log_level)


_SCHED_POLICIES = {"fifo": os.SCHED_FIFO, "rr": os.SCHED_RR}


def apply_scheduling(config: Config) -> None:
    """Apply ``-c`` and ``--nice`` as rtpproxy does: a real-time policy at its highest
    priority (refused: an error logged, the relay runs on), then the niceness (refused:
    :class:`ConfigError`). A real-time policy keeps prompt pacing and relaying on time
    when other programs compete for the CPU; the kernel's real-time throttling still
    leaves the rest of the machine its share."""
    if config.sched_policy is not None:
        policy = _SCHED_POLICIES[config.sched_policy]
        priority = os.sched_get_priority_max(policy)
        try:
            os.sched_setscheduler(0, policy, os.sched_param(priority))
        except OSError as exc:
            log.error(
                "cannot set real-time scheduling (-c %s, priority %d): %s; running with "
                "the default policy (the relay needs CAP_SYS_NICE)",
                config.sched_policy,
                priority,
                exc.strerror,
            )
        else:
            log.info(
                "real-time scheduling SCHED_%s, priority %d", config.sched_policy.upper(), priority
            )
    if config.nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, config.nice)
        except OSError as exc:
            raise ConfigError(
                f"--nice {config.nice}: cannot set the niceness: {exc.strerror}"
            ) from exc


def raise_file_limit(config: Config) -> None:
    """Apply ``-L`` and warn when the limit caps the sessions the port range could hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if config.nofile_limit is not None:
        wanted = config.nofile_limit
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        except (ValueError, OSError):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
            except (ValueError, OSError) as exc:
                log.warning("cannot set the open-file limit to %d: %s", wanted, exc)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    by_ports = len(config.ports) // 2
    try:
        open_now = len(os.listdir("/proc/self/fd")) + len(config.control)
    except OSError:
        open_now = 0
    # media keeps RESERVED_FDS free for control connections and files (E71/E72 before)
    by_files = max(0, soft - open_now - RESERVED_FDS) // SESSION_SOCKETS
    if by_files < by_ports:
        log.warning(
            "open-file limit %d allows about %d sessions, the port range %d; raise it with -L",
            soft,
            by_files,
            by_ports,
        )


def daemonize(config: Config) -> Callable[[], None]:
    """Classic double fork. The parent waits until the daemon serves its sockets (the
    function returned here says so) and exits 0, or 1 if the daemon died before: the
    start's exit status tells, and a takeover (``systemctl reload``) is complete when
    the command returns."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as ready:
            os._exit(0 if ready.read(1) == b"1" else 1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    if not config.no_chdir:
        os.chdir("/")
    if not config.no_redirect:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)

    def serving() -> None:
        with contextlib.suppress(OSError):
            os.write(write_end, b"1")
            os.close(write_end)

    return serving


def write_pidfile(path: str | None) -> None:
    """Write our pid; ``/dev/null`` (or no path) means no pid file."""
    if path and path != os.devnull:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")


def remove_pidfile(path: str | None) -> None:
    """Remove the pid file we wrote."""
    if path and path != os.devnull:
        with contextlib.suppress(OSError):
            os.unlink(path)


def recording_policy(config: Config) -> RecordingPolicy | None:
    """What ``-r``, ``-P``, ``-R``, ``-a`` and ``--record-both`` ask of recordings."""
    if config.record_dir is None:
        return None
    return RecordingPolicy(
        pcap=config.pcap_record,
        rtcp=config.record_rtcp,
        record_all=config.record_all,
        both_directions=config.record_both,
    )


class Alarm:
    """One ``loop.call_at`` for a deadline that moves. It is re-armed only when the
    deadline comes earlier: a timer armed for an earlier moment fires, finds nothing due
    and is set again, which costs less than a cancel and a ``call_at`` per change."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self.at: float | None = None

    def set(self, deadline: float | None) -> None:
        """Fire at ``deadline`` or earlier (None: nothing new to wait for)."""
        armed = self.at
        if deadline is None or (armed is not None and armed <= deadline):
            return
        self.cancel()
        self.at = deadline
        self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        """Do not fire."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.at = None

    def _fire(self) -> None:
        self._handle = self.at = None
        self._callback()


def _chain(first: Handler, then: Handler) -> Handler:
    def both(event: Any) -> None:
        first(event)
        then(event)

    return both


def _session_label(session: Session) -> str:
    return f"call-id={session.call_id.decode('latin-1')!r} tag={session.tag.decode('latin-1')!r}"


def _stream_label(stream: Stream) -> str:
    """``call-id=... tag=... leg B RTP``."""
    leg = stream.leg
    return (
        f"{_session_label(leg.session)} leg {leg.side.name} {'RTCP' if stream.is_rtcp else 'RTP'}"
    )


class Relay:
    """The running relay: engine, media, control sockets, two timers, notifier.

    Everything the engine wants done arrives here as events (:meth:`dispatch`); the
    engine's session timer is one ``loop.call_at``, and every prompt's pacing another;
    each is re-armed only when its deadline comes earlier (a later one is found when the
    armed timer fires).
    """

    def __init__(
        self,
        config: Config,
        resolver: Resolver = system_resolver,
        on_serving: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._on_serving = on_serving  # a daemon's parent waits for this
        self.names = AdvertisedNames(config.advertised_names, resolver)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters = Counters()
        self.engine: Engine | None = None
        self.notifier: Notifier | None = None
        self.media: MediaRelay | None = None
        self.metrics: RelayMetrics | None = None
        self._timer: Alarm | None = None  # sessions' idle and setup timeouts
        self._play_timer: Alarm | None = None  # the next prompt packet of any player
        self._handlers: dict[type, Handler] = {}
        self.journal: JournalWriter | None = None
        self.server: ControlServer | None = None
        self.handed_over = False  # a successor serves our sockets now: leave them be
        self._handing_over = False  # the sockets are on their way to a successor
        self._state_lock: StateLock | None = None
        self._inherited: Inherited | None = None  # what a predecessor handed over
        self._predecessor: socket.socket | None = None  # waits for our "ready"
        self._listener: socket.socket | None = None  # where a successor asks (handover.py)

    # --- events --------------------------------------------------------------------------

    def dispatch(self, events: tuple[Event, ...]) -> None:
        """Carry out the engine's events: media changes, notifications, logs."""
        handlers = self._handlers
        for event in events:
            handlers[type(event)](event)

    def _event_handlers(self, media: MediaRelay, notifier: Notifier) -> dict[type, Handler]:
        """Who carries out each kind of event: the media layer first, then ours."""
        handlers: dict[type, Handler] = {
            Latched: self._log_latched,
            LearningStarted: self._log_learning,
            SourceRefused: self._log_refused,
            SessionCreated: self._log_session,
            SessionCompleted: self._log_session,
            SessionEnded: self._log_session,
            NotifyWanted: notifier.send,
            NotifyTargetUnknown: self._log_unknown_target,
            OverloadChanged: self._log_overload,
            PlayerCreated: self._log_player,
            PlayerStarted: self._player_started,
            PlayerEnded: self._log_player,
        }
        for kind, handler in media.handlers().items():
            handlers[kind] = _chain(handler, handlers[kind]) if kind in handlers else handler
        return handlers

    @staticmethod
    def _log_latched(event: Latched) -> None:
        log.info(
            "session %s: %s to %s (%s)",
            "re-latched" if event.relatched else "latched",
            _stream_label(event.stream),
            event.stream.remote,
            event.cause.value,
        )

    @staticmethod
    def _log_learning(event: LearningStarted) -> None:
        stream = event.stream
        signalled = stream.signalled.host if stream.signalled is not None else "none"
        log.info(
            "session learning: %s: %s:%d is not on the signalled host (%s); packets from "
            "other hosts are held for %.0f ms, the signalled host wins at once",
            _stream_label(stream),
            event.source.host,
            event.source.port,
            signalled,
            stream.leg.session.latching.window * 1000,
        )

    @staticmethod
    def _log_refused(event: SourceRefused) -> None:
        stream = event.stream
        remote = stream.remote
        log.log(
            logging.WARNING if event.foreign else logging.INFO,
            "session source-refused: %s latched to %s refuses %s:%d (%s; further "
            "refusals are only counted)",
            _stream_label(stream),
            f"{remote.host}:{remote.port}" if remote is not None else "nothing",
            event.source.host,
            event.source.port,
            "another host: a scan of the port range?" if event.foreign else "not its stream",
        )

    @staticmethod
    def _log_session(event: SessionCreated | SessionCompleted | SessionEnded) -> None:
        failed = isinstance(event, SessionEnded) and event.reason is EndReason.FAILED
        if not failed and not log.isEnabledFor(logging.INFO):
            return  # making the label costs more than this check
        if isinstance(event, SessionEnded):
            level = logging.WARNING if event.reason is EndReason.FAILED else logging.INFO
            log.log(level, "session %s: %s", event.reason.value, _session_label(event.session))
        else:
            what = "created" if isinstance(event, SessionCreated) else "completed"
            log.info("session %s: %s", what, _session_label(event.session))

    @staticmethod
    def _log_unknown_target(event: NotifyTargetUnknown) -> None:
        log.info(
            "session notify-unknown: %s %s",
            _session_label(event.session),
            event.name.decode("latin-1"),
        )

    def _log_overload(self, event: OverloadChanged) -> None:
        if event.overloaded:
            log.warning(
                "overloaded: event loop %.0f%% busy (--overload_prot %.2f); new sessions get E98",
                100 * event.load,
                self.config.overload_threshold,
            )
        else:
            log.warning(
                "overload over: event loop %.0f%% busy; new sessions are accepted again",
                100 * event.load,
            )

    def _sample_load(self, window: LoadWindow) -> None:
        """``--overload_prot``: tell the engine how busy the event loop was lately. The
        loop thread's CPU time is its busy time: waiting in epoll costs none."""
        assert self.engine is not None and self._loop is not None
        try:
            self.dispatch(
                self.engine.report_load(window.sample(time.thread_time(), self._loop.time()))
            )
        except Exception:
            log.exception("load sampling failed")
        self._loop.call_later(LOAD_SAMPLE_INTERVAL, self._sample_load, window)

    @staticmethod
    def _log_player(event: PlayerCreated | PlayerStarted | PlayerEnded) -> None:
        player = event.player
        leg = player.leg
        if isinstance(event, PlayerCreated):
            times = f"{player.count} time(s)" if player.count > 0 else "in a loop"
            what = f"playing {event.prompt.decode('latin-1')!r} {times}"
            if not player.playable:
                what += f" (payload type {player.payload_type} cannot be sent: muting only)"
            elif not player.started:
                what += " (waiting for the listener's first packet)"
        elif isinstance(event, PlayerStarted):
            what = "started on the listener's first packet"
        else:
            what = event.reason.value
        log.info("prompt %s: %s leg %s", what, _session_label(leg.session), leg.side.name)

    def _player_started(self, event: PlayerStarted) -> None:
        self._log_player(event)
        self._arm_play_timer()

    def _after_command(self, events: tuple[Event, ...]) -> None:
        """A command (or the timer) ran: act on it, then the timers and SIGHUP's drain."""
        self.dispatch(events)
        if events and self.journal is not None:
            self.journal.soon()
        self._arm_timer()
        self._arm_play_timer()
        engine = self.engine
        assert engine is not None
        if engine.draining and not len(engine.table):
            log.info("last session gone after SIGHUP, exiting")
            self.stop()

    def _cancel_alarms(self) -> None:
        """Neither the session timer nor the prompt timer fires (shutdown, hand-over)."""
        for alarm in (self._timer, self._play_timer):
            if alarm is not None:
                alarm.cancel()

    def _arm_timer(self) -> None:
        assert self.engine is not None and self._timer is not None
        self._timer.set(self.engine.get_timer())

    def _arm_play_timer(self) -> None:
        assert self.engine is not None and self._play_timer is not None
        self._play_timer.set(self.engine.get_play_timer())

    def _on_play_timer(self) -> None:
        """Send every prompt packet that is due, out of its listener's leg."""
        assert self.engine is not None and self._loop is not None and self.media is not None
        try:
            sends, events = self.engine.handle_play_timer(self._loop.time() + PLAY_TIMER_SLACK)
            send = self.media.send_played
            for stream, packet in sends:
                send(stream, packet)
            if events:
                self.dispatch(events)
        except Exception:  # the timer must survive anything
            log.exception("prompt timer failed")
        self._arm_play_timer()

    def _on_timer(self) -> None:
        assert self.engine is not None and self._loop is not None and self.media is not None
        try:
            self.media.refresh_counters()  # kernel-forwarded packets count as activity
            self._after_command(self.engine.handle_timer(self._loop.time()))
        except Exception:  # the timer must survive anything
            log.exception("session timer failed")
            self._arm_timer()

    def _housekeeping(self) -> None:
        """Once a second: fold kernel-forwarded packets into the streams (idle timers,
        metrics and re-latching read them) and write out what recordings buffered."""
        assert self.media is not None and self._loop is not None
        try:
            self.media.refresh_counters()
            self.media.flush_taps()
            if self.journal is not None and self.engine is not None:
                self.journal.tick(len(self.engine.table))
        except Exception:
            log.exception("housekeeping failed")
        self._loop.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)

    def _resolve_names(self) -> None:
        """Look the advertised names up again, in a thread (a lookup may block)."""
        assert self._loop is not None
        loop = self._loop
        future = loop.run_in_executor(None, self.names.lookup)

        def done(result: asyncio.Future[dict[str, str | OSError]]) -> None:
            if not result.cancelled() and result.exception() is None:
                self._take_names(result.result())
            loop.call_later(self.config.resolve_interval, self._resolve_names)

        future.add_done_callback(done)

    def _take_names(self, results: dict[str, str | OSError]) -> None:
        assert self.engine is not None
        self.counters.relay.resolve_failures += sum(
            isinstance(r, OSError) for r in results.values()
        )
        for name, address in self.names.apply(results):
            self.engine.set_advertised(name, address)

    # --- running -------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or SIGHUP and the last session gone)."""
        config = self.config
        self._loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._timer = Alarm(loop, self._on_timer)
        self._play_timer = Alarm(loop, self._on_play_timer)
        try:
            kernel = self._kernel_forwarder(loop)
        except NftError as exc:
            log.critical("%s", kernel_refusal(exc))
            return 1
        record_dirs = None
        if config.record_dir is not None:
            spool = Path(config.spool_dir) if config.spool_dir else None
            record_dirs = RecordDirs(Path(config.record_dir), spool)
        self.media = media = MediaRelay(
            loop,
            MediaConfig(config.tos, config.send_small_twice),
            self.counters,
            kernel,
            record_dirs=record_dirs,
        )
        ports = PortAllocator(
            config.ports, random_order=not config.sequential_ports, reserved=config.reserved_ports()
        )
        self.engine = engine = Engine(
            EngineConfig(
                ttl=config.ttl,
                setup_ttl=config.setup_ttl,
                independent_timers=config.independent_timers,
                force_asymmetric=config.force_asymmetric,
                bridge_symmetric=config.bridge_symmetric,
                addresses=config.addresses,
                notify_targets=config.notify_targets,
                recording=recording_policy(config),
                copy_rtcp=config.record_rtcp,
                latching=config.latching,
                overload_threshold=config.overload_threshold,
            ),
            ports,
            media,
            self.counters,
        )
        media.connect_engine(engine.receive, self.dispatch)
        self.notifier = Notifier(self.counters.relay)
        self._handlers = self._event_handlers(media, self.notifier)
        # What start-up made (modules, configuration) lives as long as the process: out
        # of the collector's sight, a full collection walks only the sessions, not the
        # tens of thousands of objects of the imports as well.
        # Before the journal's sessions are restored: those end, and their cycles must
        # stay collectable.
        gc.freeze()
        if config.state_file is not None and not self._open_journal(config.state_file):
            media.close()
            return 1
        observe = None
        if config.metrics_listen is not None:
            # imported here: Prometheus's client costs a restart's media a tenth of a second
            from .observe.metrics import RelayMetrics

            self.metrics = RelayMetrics(
                engine,
                self.notifier,
                loop,
                kernel,
                media.refresh_counters,
            )
            if self._predecessor is None:  # after a takeover: once the predecessor is gone
                self._serve_metrics()
            observe = self.metrics.observe
        processor = CommandProcessor(
            engine,
            loop.time,
            on_events=self._after_command,
            observe=observe,
            refresh=media.refresh_counters,
        )
        stdio_only = all(s.kind in (ControlKind.STDIO, ControlKind.STDIOC) for s in config.control)
        self.server = server = ControlServer(
            processor,
            config.control,
            uid=config.uid,
            gid=config.gid,
            mode=config.socket_mode,
            on_stdin_eof=self._stdin_eof(stdio_only),
            counters=self.counters,
        )
        # Signals first: a command answered on the first socket must already be governed by them.
        self._install_signals(loop)
        await server.start(None if self._inherited is None else self._inherited.control)
        self._drop_privileges()
        self._started_serving()
        log.info(
            "pyrtpproxy %s started, media ports %d-%d; %s %s at %s",
            __version__,
            config.ports[0],
            config.ports[-1] + 1,  # the last RTCP port
            platform.python_implementation(),  # which build runs us matters (operations.md)
            platform.python_version(),
            sys.executable,
        )
        loop.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)
        if config.overload_threshold is not None:
            self._sample_load(LoadWindow(LOAD_WINDOW))
        if self.names.names:
            self._take_names(self.names.lookup())  # at start, before any command
            if config.resolve_interval > 0:
                loop.call_later(config.resolve_interval, self._resolve_names)
        try:
            await self._stop.wait()
        finally:
            self._cancel_alarms()
            self._close_listener()
            passed_on = self.handed_over or self._handing_over  # (a signal mid-transfer)
            server.close(unlink=not passed_on)
            if passed_on:  # the successor serves the sockets, taps and kernel path
                media.close(finish_taps=False, delete_kernel_table=False)
            elif self.journal is None:
                self.dispatch(engine.delete_all(loop.time()))
                media.close()
            else:  # the sessions stay in the journal for the next start
                self.journal.write_now()
                self.journal.close()
                log.info("%d sessions kept in %s", len(engine.table), self.journal.path)
                media.close(finish_taps=False)
            self.notifier.close()
            if self.metrics is not None:
                self.metrics.close()
            log.info("pyrtpproxy stopped")
        return 0

    def _open_journal(self, path: str) -> bool:
        """Own the journal at ``path`` (or take it over from the relay that owns it:
        its sockets are adopted), restore its sessions and start writing it."""
        assert self.engine is not None and self._loop is not None and self.media is not None
        self._state_lock = StateLock(path)
        try:
            owned = self._state_lock.try_acquire()
        except OSError as exc:
            log.critical("--state-file %s: cannot lock %s: %s", path, exc.filename, exc.strerror)
            return False
        if not owned:
            try:
                taken = take_over(socket_path(path))
            except HandoverError as exc:
                log.critical("--state-file %s: taking over from the running relay failed: %s",
                             path, exc)  # fmt: skip
                return False
            if taken is None:
                log.critical("--state-file %s: another relay is using it", path)
                return False
            self._predecessor, self._inherited = taken
            self.media.adopt(self._inherited.media)
            self._inherited.media.clear()
        engine, loop = self.engine, self._loop
        self._restore(load(path))
        unused = self.media.drop_unadopted()
        if unused:
            log.warning("%d media sockets of the previous relay served no session", unused)
        self.journal = JournalWriter(
            path, loop, lambda: engine.export_sessions(loop.time()), self.counters.relay
        )
        self.journal.write_now()  # a bad journal is replaced at once
        return True

    def _started_serving(self) -> None:
        """Every socket is served: tell systemd, a predecessor that it may exit, and a
        daemon's parent that the start is complete."""
        predecessor = self._predecessor
        if predecessor is None:
            sd_notify("READY=1")
            if self.config.state_file is not None:
                self._listen_for_successor()
        else:
            # systemd follows us from now on (ExecReload started us; NotifyAccess=all)
            sd_notify(f"MAINPID={os.getpid()}\nREADY=1")
            confirm(predecessor)
            self._predecessor = None
            log.warning("took over from the previous relay: serving its sockets and sessions")
            self._wait_for_lock()
        if self._on_serving is not None:
            self._on_serving()

    def _wait_for_lock(self) -> None:
        """After a takeover: the journal's lock is ours once the predecessor exited."""
        assert self._state_lock is not None and self._loop is not None
        try:
            owned = self._state_lock.try_acquire()
        except OSError as exc:
            log.error("cannot lock the state file: %s", exc)
            return
        if not owned:
            self._loop.call_later(LOCK_RETRY, self._wait_for_lock)
            return
        if self.metrics is not None:
            try:
                self._serve_metrics()
            except OSError as exc:
                log.error("cannot serve metrics on %s: %s", self.config.metrics_listen, exc)
        self._listen_for_successor()

    def _serve_metrics(self) -> None:
        assert self.metrics is not None and self.config.metrics_listen is not None
        host, port = self.metrics.serve(*self.config.metrics_listen)
        log.info("serving metrics on http://%s:%d/metrics", host, port)

    def _listen_for_successor(self) -> None:
        """Listen where a relay started with our ``--state-file`` asks for our sockets."""
        assert self.config.state_file is not None and self._loop is not None
        path = socket_path(self.config.state_file)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            listener.bind(path)
            os.chmod(path, 0o600)
            listener.listen(1)
        except OSError as exc:
            listener.close()
            log.error("cannot listen for a successor on %s: %s (restarts lose media)",
                      path, exc.strerror)  # fmt: skip
            return
        listener.setblocking(False)
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._on_successor)

    def _close_listener(self) -> None:
        listener = self._listener
        if listener is None or self._loop is None:
            return
        self._listener = None
        self._loop.remove_reader(listener.fileno())
        listener.close()
        assert self.config.state_file is not None
        with contextlib.suppress(OSError):
            os.unlink(socket_path(self.config.state_file))

    def _on_successor(self) -> None:
        assert self._listener is not None and self._loop is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(True)
        conn.settimeout(TRANSFER_TIMEOUT)
        self._loop.create_task(self._hand_over(conn))

    async def _hand_over(self, conn: socket.socket) -> None:
        """Give our sockets and sessions to the relay on ``conn``, then exit; serve on
        if it does not confirm (handover.py has the steps)."""
        loop, media, server = self._loop, self.media, self.server
        assert loop is not None and media is not None and server is not None
        try:
            hello, fds = await loop.run_in_executor(None, receive_message, conn)
        except (OSError, HandoverError) as exc:
            log.warning("a successor went away before its hello: %s", exc)
            conn.close()
            return
        for fd in fds:
            os.close(fd)
        if hello.get("hello") != PROTOCOL:
            with contextlib.suppress(OSError):
                send_message(conn, {"error": f"this relay hands over with protocol {PROTOCOL}"})
            conn.close()
            return
        log.warning("handing over to a new relay (pid %s)", hello.get("pid"))
        self._close_listener()
        control = server.hand_over()
        await asyncio.sleep(HANDOVER_DRAIN)  # answer the commands already accepted
        media.suspend()
        self._cancel_alarms()
        media.refresh_counters()
        journal, self.journal = self.journal, None
        assert journal is not None
        journal.write_now()
        self._handing_over = True
        ready = False
        try:
            send_sockets(conn, [(MEDIA, fd) for fd in media.handover_sockets()] + control)
            answer, fds = await loop.run_in_executor(None, receive_message, conn)
            for fd in fds:
                os.close(fd)
            ready = answer.get("ready") is True
        except (OSError, HandoverError) as exc:
            log.error("hand-over failed: %s", exc)
        conn.close()
        self._handing_over = False
        if ready:
            self.handed_over = True
            for _name, fd in control:
                os.close(fd)
            log.warning("the new relay serves our sockets and sessions now; exiting")
            self.stop()
            return
        log.error("the new relay did not take over; serving again")
        self.journal = journal
        media.resume()
        sockets: dict[str, list[socket.socket]] = {}
        for name, fd in control:
            sockets.setdefault(name, []).append(socket.socket(fileno=fd))
        await server.start(sockets)
        self._arm_timer()
        self._arm_play_timer()
        self._listen_for_successor()

    def _restore(self, states: list[SessionState]) -> None:
        """Bring the journal's sessions back (the ports bound again, sockets aimed)."""
        assert self.engine is not None and self._loop is not None and self.media is not None
        if not states:
            return
        try:
            with self.media.resuming(), without_gc():
                restored = self.engine.restore(states, self._loop.time())
                self.dispatch(restored.events)
        except Exception:  # a journal must never stop the relay from starting
            log.exception("restoring sessions from the state file failed")
            return
        self.counters.relay.sessions_restored += restored.restored
        self.counters.relay.sessions_not_restored += len(restored.skipped)
        for skipped in restored.skipped[:SKIPPED_LOGGED]:
            log.error(
                "session not restored: call-id=%r tag=%r: %s",
                skipped.call_id.decode("latin-1"),
                skipped.tag.decode("latin-1"),
                skipped.reason,
            )
        if len(restored.skipped) > SKIPPED_LOGGED:
            log.error("%d more sessions not restored", len(restored.skipped) - SKIPPED_LOGGED)
        log.log(
            logging.WARNING if restored.skipped else logging.INFO,
            "restored %d sessions from the state file (%d skipped)",
            restored.restored,
            len(restored.skipped),
        )
        self._arm_timer()

    def _kernel_forwarder(self, loop: asyncio.AbstractEventLoop) -> KernelForwarder | None:
        """The kernel path as ``--kernel-forward`` asks, and the one start-up line that
        says which path media takes and why. Raises :class:`NftError` when ``on``
        cannot be honoured."""
        config = self.config
        mode = config.kernel_forward
        if mode is KernelMode.OFF:
            log.info("kernel forwarding: off (--kernel-forward off)")
            return None
        if mode is KernelMode.AUTO and config.uid is not None:
            log.info("kernel forwarding: off (auto: -u USER gives up CAP_NET_ADMIN)")
            return None
        table = config.nft_table or default_table_name()
        try:
            kernel = open_forwarder(table, config.tos, loop.call_soon, self.counters, loop.time)
        except NftError as exc:
            if mode is KernelMode.ON:
                raise
            # no capability is a choice of the operator's; a failing nftables is not
            level = logging.INFO if isinstance(exc, MissingCapability) else logging.WARNING
            log.log(level, "kernel forwarding: off (auto: %s)", exc)
            return None
        unrouted = kernel.unrouted_families()
        log.info(
            "kernel forwarding: on (nftables table inet %s%s)",
            table,
            ""
            if not unrouted
            else "; media between two other hosts stays in user space where "
            + " and ".join(f"{name}=0" for name in unrouted),
        )
        return kernel

    def _stdin_eof(self, stdio_only: bool) -> Callable[[], None]:
        def on_eof() -> None:
            graceful = any(s.kind is ControlKind.STDIOC for s in self.config.control)
            if graceful and not stdio_only:
                self._begin_draining()
            elif stdio_only:
                self.stop()
            else:  # protocol.md §1: EOF ends the relay only when stdio is the only socket
                log.info("EOF on stdin; serving the other control sockets")

        return on_eof

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self._on_terminate)
        loop.add_signal_handler(signal.SIGINT, self._on_terminate)
        loop.add_signal_handler(signal.SIGHUP, self._begin_draining)

    def _on_terminate(self) -> None:
        if self._stop is not None and self._stop.is_set():
            os._exit(1)  # second signal: exit immediately
        log.info("signal received, shutting down")
        self.stop()

    def _begin_draining(self) -> None:
        assert self.engine is not None
        log.warning("graceful shutdown: new sessions are refused (E99), exiting when the last ends")
        self.engine.draining = True
        if not len(self.engine.table):
            self.stop()

    def stop(self) -> None:
        """Ask the relay to shut down."""
        if self._stop is not None:
            self._stop.set()

    def _drop_privileges(self) -> None:
        if self.config.gid is not None:
            os.setgid(self.config.gid)
        if self.config.uid is not None:
            os.setuid(self.config.uid)


def run(config: Config) -> int:
    """Run the relay (after optional daemonising); returns the exit status.

    Raises :class:`ConfigError` when :func:`prepare` finds the machine unfit for ``config``.
    """
    import uvloop

    prepare(config)
    daemon = not config.foreground
    serving = daemonize(config) if daemon else None
    setup_logging(config, daemon)
    apply_scheduling(config)
    raise_file_limit(config)
    write_pidfile(config.pidfile)
    relay = Relay(config, on_serving=serving)
    try:
        return uvloop.run(relay.run())
    finally:
        if not relay.handed_over:  # the successor has written its own
            remove_pidfile(config.pidfile)
