"""Builds the relay from a :class:`Config` and runs it until a signal says stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, ControlKind
from .control.notify import Notifier
from .control.processor import CommandProcessor
from .control.server import ControlServer
from .engine.counters import Counters
from .engine.engine import Engine, EngineConfig
from .engine.events import (
    EndReason,
    Event,
    Latched,
    NotifyTargetUnknown,
    NotifyWanted,
    PlayerCreated,
    PlayerEnded,
    PlayerStarted,
    SessionCompleted,
    SessionCreated,
    SessionEnded,
)
from .engine.ports import PortAllocator
from .engine.session import Session
from .engine.taps import RecordingPolicy
from .media.kernel import KernelForwarder, Nftables, NftError
from .media.record import RecordDirs
from .media.relay import MediaConfig, MediaRelay
from .names import AdvertisedNames, Resolver, system_resolver
from .net import probe_bind
from .observe.metrics import RelayMetrics

log = logging.getLogger("pyrtpproxy")

Handler = Callable[[Any], None]

SOCKETS_PER_SESSION = 4
HOUSEKEEPING_INTERVAL = 1.0  # seconds between kernel counter reads and recording flushes
# The event loop's timers have millisecond resolution (a wakeup comes up to half a
# millisecond early): a prompt packet due within this much of a wakeup goes out in it
# rather than in a wakeup of its own a moment later.
PLAY_TIMER_SLACK = 0.0005


def prepare(config: Config, resolver: Resolver = system_resolver) -> None:
    """The start-up's checks and changes outside the process, before daemonising so that a
    failure still reaches the terminal: make the runtime directory, and check that every
    media address can be bound. Raises :class:`ConfigError` naming the flag."""
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
    by_files = int(0.8 * soft / (SOCKETS_PER_SESSION + 1))
    if by_files < by_ports:
        log.warning(
            "open-file limit %d allows about %d sessions, the port range %d; raise it with -L",
            soft,
            by_files,
            by_ports,
        )


def daemonize(config: Config) -> None:
    """Classic double fork; the parent exits 0 once the child is detached."""
    if os.fork() > 0:
        os._exit(0)
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


class Relay:
    """The running relay: engine, media, control sockets, two timers, notifier.

    Everything the engine wants done arrives here as events (:meth:`dispatch`); the
    engine's session timer is one ``loop.call_at``, and every prompt's pacing another;
    each is re-armed only when its deadline comes earlier (a later one is found when the
    armed timer fires).
    """

    def __init__(self, config: Config, resolver: Resolver = system_resolver) -> None:
        self.config = config
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
            SessionCreated: self._log_session,
            SessionCompleted: self._log_session,
            SessionEnded: self._log_session,
            NotifyWanted: notifier.send,
            NotifyTargetUnknown: self._log_unknown_target,
            PlayerCreated: self._log_player,
            PlayerStarted: self._player_started,
            PlayerEnded: self._log_player,
        }
        for kind, handler in media.handlers().items():
            handlers[kind] = _chain(handler, handlers[kind]) if kind in handlers else handler
        return handlers

    @staticmethod
    def _log_latched(event: Latched) -> None:
        stream = event.stream
        leg = stream.leg
        log.info(
            "session %s: %s leg %s %s to %s",
            "re-latched" if event.relatched else "latched",
            _session_label(leg.session),
            leg.side.name,
            "RTCP" if stream.is_rtcp else "RTP",
            stream.remote,
        )

    @staticmethod
    def _log_session(event: SessionCreated | SessionCompleted | SessionEnded) -> None:
        failed = isinstance(event, SessionEnded) and event.reason is EndReason.FAILED
        if not failed and not log.isEnabledFor(logging.INFO):  # the label costs more
            return
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
        self._arm_timer()
        self._arm_play_timer()
        engine = self.engine
        assert engine is not None
        if engine.draining and not len(engine.table):
            log.info("last session gone after SIGHUP, exiting")
            self.stop()

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
            log.critical("cannot set up kernel forwarding (--kernel-forward): %s", exc)
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
            ),
            ports,
            media,
            self.counters,
        )
        media.connect_engine(engine.receive, self.dispatch)
        self.notifier = Notifier(self.counters.relay)
        self._handlers = self._event_handlers(media, self.notifier)
        observe = None
        if config.metrics_listen is not None:
            self.metrics = RelayMetrics(
                engine,
                self.notifier,
                loop,
                None if kernel is None else lambda: kernel.forwarded_streams,
                media.refresh_counters,
            )
            host, port = self.metrics.serve(*config.metrics_listen)
            log.info("serving metrics on http://%s:%d/metrics", host, port)
            observe = self.metrics.observe
        processor = CommandProcessor(
            engine,
            loop.time,
            on_events=self._after_command,
            refresh=media.refresh_counters,
            **({} if observe is None else {"observe": observe}),
        )
        stdio_only = all(s.kind in (ControlKind.STDIO, ControlKind.STDIOC) for s in config.control)
        server = ControlServer(
            processor,
            config.control,
            uid=config.uid,
            gid=config.gid,
            mode=config.socket_mode,
            on_stdin_eof=self._stdin_eof(stdio_only),
        )
        # Signals first: a command answered on the first socket must already be governed by them.
        self._install_signals(loop)
        await server.start()
        self._drop_privileges()
        log.info(
            "pyrtpproxy %s started, media ports %d-%d",
            __version__,
            config.ports[0],
            config.ports[-1] + 1,  # the last RTCP port
        )
        loop.call_later(HOUSEKEEPING_INTERVAL, self._housekeeping)
        if self.names.names:
            self._take_names(self.names.lookup())  # at start, before any command
            if config.resolve_interval > 0:
                loop.call_later(config.resolve_interval, self._resolve_names)
        try:
            await self._stop.wait()
        finally:
            self._timer.cancel()
            self._play_timer.cancel()
            server.close()
            self.dispatch(engine.delete_all(loop.time()))
            media.close()
            self.notifier.close()
            if self.metrics is not None:
                self.metrics.close()
            log.info("pyrtpproxy stopped")
        return 0

    def _kernel_forwarder(self, loop: asyncio.AbstractEventLoop) -> KernelForwarder | None:
        config = self.config
        if not config.kernel_forward:
            return None
        kernel = KernelForwarder(
            Nftables(), config.nft_table, config.tos, loop.call_soon, self.counters, loop.time
        )
        kernel.start()
        log.info(
            "kernel forwarding on: settled IPv4 streams go through nftables table ip %s",
            config.nft_table,
        )
        if not kernel.routes_between_hosts:
            log.warning(
                "net.ipv4.ip_forward is 0: streams between two other hosts stay in user space"
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
    if daemon:
        daemonize(config)
    setup_logging(config, daemon)
    raise_file_limit(config)
    write_pidfile(config.pidfile)
    try:
        return uvloop.run(Relay(config).run())
    finally:
        remove_pidfile(config.pidfile)
