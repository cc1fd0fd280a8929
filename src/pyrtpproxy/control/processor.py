"""The one path every control transport uses: bytes in, reply bytes out, counted."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from ..engine.handler import Engine, RequestContext
from ..protocol.commands import Update
from ..protocol.errors import ErrorCode, ProtocolError
from ..protocol.parse import parse, split_cookie
from . import introspect

log = logging.getLogger("pyrtpproxy.control")

MAX_COMMAND = 8191
COOKIE_TTL = 35.0  # seconds a UDP reply stays cached for retransmissions

CommandObserver = Callable[[str, str, float], None]


def _observe_nothing(kind: str, result: str, seconds: float) -> None:
    return None


class RateLimitedLog:
    """Logs bad commands, at most ``burst`` lines per ``period`` seconds, then a summary."""

    def __init__(self, burst: int = 20, period: float = 10.0) -> None:
        self._burst = burst
        self._period = period
        self._window_start = 0.0
        self._count = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        """Log unless this window's budget is spent."""
        now = time.monotonic()
        if now - self._window_start >= self._period:
            if self._suppressed:
                log.warning("%d more bad commands not logged", self._suppressed)
            self._window_start, self._count, self._suppressed = now, 0, 0
        self._count += 1
        if self._count <= self._burst:
            log.warning(message, *args)
        else:
            self._suppressed += 1


class CommandProcessor:
    """Parses and executes commands, counts them, and keeps the UDP reply cache."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float],
        observe: CommandObserver = _observe_nothing,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._observe = observe
        self._bridge = engine.config.addresses.bridge_mode
        self._cache: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._bad_log = RateLimitedLog()

    def handle(self, data: bytes, ctx: RequestContext) -> bytes:
        """Execute one command (no cookie); returns the reply line ending in ``\\n``."""
        counters = self._engine.counters
        counters.ncmds_rcvd += 1
        started = time.perf_counter()
        kind = "?"
        try:
            extension = introspect.match(data[:MAX_COMMAND])  # Zsessions, docs/ctl.md
            if extension is not None:
                kind, failed = "Introspect", False
                body = introspect.sessions_reply(self._engine, *extension, self._clock())
            else:
                command = parse(data[:MAX_COMMAND], bridge_mode=self._bridge)
                kind = type(command).__name__
                body = self._engine.execute(command, self._clock(), ctx)
                failed = isinstance(command, Update) and command.lookup_only and body == b"0"
        except ProtocolError as exc:
            body, failed = exc.code.wire, True
            self._bad_log.warning("command %r failed: %s", data[:120], exc)
        except Exception:  # a bug must cost one command, never the relay
            log.exception("internal error on command %r", data[:120])
            body, failed = ErrorCode.INTERNAL_ERROR.wire, True
        if failed:
            counters.ncmds_errs += 1
        else:
            counters.ncmds_succd += 1
        counters.ncmds_repld += 1
        self._observe(kind, "error" if failed else "ok", time.perf_counter() - started)
        return body + b"\n"

    def handle_datagram(self, data: bytes, ctx: RequestContext) -> bytes:
        """A UDP command: cookie, reply cache, then :meth:`handle`."""
        cookie, command = split_cookie(data[:MAX_COMMAND])
        if cookie is None:
            self._engine.counters.ncmds_rcvd += 1
            self._engine.counters.ncmds_errs += 1
            return ErrorCode.SYNTAX.wire + b"\n"
        now = self._clock()
        self._expire(now)
        cached = self._cache.get(cookie)
        if cached is not None:
            self._engine.counters.ncmds_rcvd_ndups += 1
            self._engine.counters.ncmds_repld += 1
            return cached[1]
        reply = cookie + b" " + self.handle(command, ctx)
        self._cache[cookie] = (now, reply)
        return reply

    def _expire(self, now: float) -> None:
        while self._cache:
            cookie, (stored, _reply) = next(iter(self._cache.items()))
            if now - stored < COOKIE_TTL:
                break
            del self._cache[cookie]
