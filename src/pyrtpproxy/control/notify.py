"""Timeout notifications (relay-behaviour.md §6): ``tag\\n`` over a persistent stream
connection per target, reconnecting as needed, with a bounded queue and counted drops."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ..engine.addresses import Endpoint
from ..engine.counters import RelayCounters
from ..engine.events import NotifyWanted

log = logging.getLogger("pyrtpproxy.notify")

QUEUE_LIMIT = 1000
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
CONNECT_TIMEOUT = 3.0


Address = str | Endpoint  # a Unix socket path, or a TCP endpoint


def _describe(address: Address) -> str:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (IPv6 in brackets), for logs."""
    if isinstance(address, str):
        return f"unix:{address}"
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"tcp:{host}:{address.port}"


class _Connection:
    """One target: a queue drained by a task that (re)connects whenever it must."""

    def __init__(self, address: Address, stats: RelayCounters) -> None:
        self.address = address
        self._name = _describe(address)
        self._stats = stats
        self._queue: deque[tuple[bytes, bytes]] = deque()  # (line, call-id for the log)
        self._wakeup = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def enqueue(self, line: bytes, call_id: bytes = b"") -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self._stats.notifications_dropped += 1
            log.warning("notification queue for %s is full, dropped the oldest", self._name)
        self._queue.append((line, call_id))
        self._wakeup.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await self._deliver_queue()
                failures = 0
            except (TimeoutError, OSError) as exc:
                self._stats.notifications_failed += 1
                self._close()
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "notification target %s unreachable (%s); retrying", self._name, exc
                    )
                await asyncio.sleep(delay)

    async def _deliver_queue(self) -> None:
        if (
            self._writer is None
            or self._writer.is_closing()
            or (self._reader and self._reader.at_eof())
        ):
            self._close()
            await self._connect()
        assert self._writer is not None
        while self._queue:
            line, call_id = self._queue[0]
            self._writer.write(line)
            await self._writer.drain()
            self._queue.popleft()
            self._stats.notifications_sent += 1
            log.info(
                "session notified: call-id=%r tag=%r to %s",
                call_id.decode("latin-1"),
                line.rstrip(b"\n").decode("latin-1"),
                self._name,
            )

    async def _connect(self) -> None:
        if isinstance(self.address, str):
            opening = asyncio.open_unix_connection(self.address)
        else:
            opening = asyncio.open_connection(self.address.host, self.address.port)
        self._reader, self._writer = await asyncio.wait_for(opening, CONNECT_TIMEOUT)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._reader = None

    def close(self) -> None:
        self._task.cancel()
        self._close()


class Notifier:
    """Delivers timeout notifications; one persistent connection per target."""

    def __init__(self, stats: RelayCounters | None = None) -> None:
        self.stats = stats or RelayCounters()
        self._connections: dict[Address, _Connection] = {}

    def send(self, note: NotifyWanted) -> None:
        """Queue ``note`` for delivery (never blocks)."""
        address = note.target.address_for(note.source_host)
        connection = self._connections.get(address)
        if connection is None:
            connection = self._connections[address] = _Connection(address, self.stats)
        connection.enqueue(note.tag + b"\n", note.call_id)

    @property
    def queued(self) -> int:
        """Notifications waiting for delivery."""
        return sum(c.queued for c in self._connections.values())

    def close(self) -> None:
        """Stop every connection."""
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
