"""The one path every control transport uses: bytes in, reply bytes out, counted.

Framing (a line, a datagram with its cookie) is the transport's business; everything
after it happens here, the same for every transport: parse, execute, hand the events to
the shell, count, encode. Time comes from the injected ``clock``, so the reply cache and
the bad-command log are tested without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..engine.engine import Engine, RequestContext
from ..engine.events import Event
from ..protocol import replies
from ..protocol.commands import READS_COUNTERS, Command
from ..protocol.errors import ErrorCode, ProtocolError
from ..protocol.parse import parse, split_cookie
from .replycache import ReplyCache

log = logging.getLogger("pyrtpproxy.control")

MAX_COMMAND = 8191
COOKIE_TTL = 35.0  # seconds a UDP reply stays cached for retransmissions
# Replies cached at most: a flood of fresh cookies costs bounded memory (about 20 MiB),
# far more than clients retransmitting within COOKIE_TTL ever need.
MAX_CACHED_REPLIES = 100_000
BAD_COMMAND_BURST = 20  # bad commands logged per window, then counted
BAD_COMMAND_WINDOW = 10.0

CommandObserver = Callable[[str, bool, float], None]
EventSink = Callable[[tuple[Event, ...]], None]


def _ignore_events(events: tuple[Event, ...]) -> None:
    return None


def _nothing() -> None:
    return None


class RateLimitedLog:
    """Logs at most ``burst`` lines per ``period`` seconds, then how many ``what`` were
    not logged (bad commands, by default)."""

    def __init__(
        self,
        clock: Callable[[], float],
        burst: int = BAD_COMMAND_BURST,
        period: float = BAD_COMMAND_WINDOW,
        what: str = "bad commands",
    ) -> None:
        self._clock = clock
        self._what = what
        self._burst = burst
        self._period = period
        self._window_start = float("-inf")
        self._count = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        """Log unless this window's budget is spent."""
        now = self._clock()
        if now - self._window_start >= self._period:
            if self._suppressed:
                log.warning("%d more %s not logged", self._suppressed, self._what)
            self._window_start, self._count, self._suppressed = now, 0, 0
        self._count += 1
        if self._count <= self._burst:
            log.warning(message, *args)
        else:
            self._suppressed += 1


class CommandProcessor:
    """Parses and executes commands, counts them, and keeps the UDP reply cache.

    ``on_events`` receives the events of every command (ports to open and close,
    sessions that ended...); ``observe``, if given, each command's kind, success and
    duration; ``refresh`` runs before commands whose answer includes live packet counts
    (it folds in kernel-forwarded packets).
    """

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float],
        on_events: EventSink = _ignore_events,
        observe: CommandObserver | None = None,
        refresh: Callable[[], None] = _nothing,
    ) -> None:
        self._engine = engine
        self._counters = engine.counters
        self._clock = clock
        self._on_events = on_events
        self._observe = observe
        self._refresh = refresh
        self._bridge = engine.config.addresses.bridge_mode
        self._replies = ReplyCache(COOKIE_TTL, MAX_CACHED_REPLIES)
        self._bad_log = RateLimitedLog(clock)

    def handle(self, data: bytes, ctx: RequestContext) -> bytes:
        """One command of a stream transport (no cookie); the reply line."""
        return replies.frame(self._execute(data[:MAX_COMMAND], ctx))

    def handle_datagram(self, data: bytes, ctx: RequestContext) -> bytes:
        """One UDP datagram: cookie, reply cache, then the command."""
        cookie, command = split_cookie(data[:MAX_COMMAND])
        if cookie is None:
            self._counters.command_refused()
            return replies.error_line(ErrorCode.SYNTAX)
        now = self._clock()
        cached = self._replies.get(cookie, now)
        if cached is not None:
            self._counters.retransmission_answered()
            return cached
        reply = replies.frame(self._execute(command, ctx), cookie)
        self._replies.put(cookie, reply, now)
        return reply

    def _execute(self, data: bytes, ctx: RequestContext) -> bytes:
        """Parse and run one command; the reply body. Never raises."""
        counters = self._counters
        counters.command_received()
        observe = self._observe
        started = 0.0 if observe is None else time.perf_counter()  # only if anyone asks
        command: Command | None = None
        succeeded = False
        try:
            command = parse(data, bridge_mode=self._bridge)
            if isinstance(command, READS_COUNTERS):
                self._refresh()
            reply, events = self._engine.execute(command, self._clock(), ctx)
            self._on_events(events)
            succeeded = reply.succeeded
            body = replies.encode(reply)
        except ProtocolError as exc:
            self._on_events(self._engine.take_events())  # ports a failed U gave back
            self._bad_log.warning("command %r failed: %s", data[:120], exc)
            body = exc.code.wire
        except Exception:  # a bug must cost one command, never the relay
            log.exception("internal error on command %r", data[:120])
            self._on_events(self._engine.take_events())
            body = ErrorCode.INTERNAL_ERROR.wire
        counters.command_replied(succeeded)
        if observe is not None:
            kind = "?" if command is None else type(command).__name__
            observe(kind, succeeded, time.perf_counter() - started)
        return body
