"""``pyrtpproxy ctl top``: a refreshing screen of sessions sorted by packet rate."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from .client import ControlClient
from .sessions import SESSION_HEADER, SessionList, fetch_sessions, format_session

MIN_INTERVAL = 0.2
TOP_COUNTERS = ("nsess_created", "nsess_timeout", "npkts_rcvd", "npkts_relayed", "npkts_discard")


def _global_counters(client: ControlClient) -> dict[str, float]:
    reply = client.request("Gv " + " ".join(TOP_COUNTERS))
    values: dict[str, float] = {}
    for part in reply.split():
        name, eq, value = part.partition("=")
        if eq:
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


class TopView:
    """State between frames: previous counters, to turn them into rates."""

    def __init__(self) -> None:
        self._previous_at: float | None = None
        self._previous_globals: dict[str, float] = {}
        self._previous: dict[tuple[str, str], tuple[int, int]] = {}

    def frame(
        self,
        listing: SessionList,
        globals_: dict[str, float],
        height: int,
        now: float | None = None,
    ) -> list[str]:
        """Lines of one screen; sessions sorted by packet rate, busiest first.

        ``now`` (a monotonic clock reading, read here when not given) times the rates.
        """
        if now is None:
            now = time.monotonic()
        dt = (now - self._previous_at) if self._previous_at is not None else 0.0
        rates: dict[tuple[str, str], tuple[float, float]] = {}
        current: dict[tuple[str, str], tuple[int, int]] = {}
        for item in listing.sessions:
            key = (item.call_id, item.tag)
            counts = (item.from_leg.rtp_in, item.to_leg.rtp_in)
            current[key] = counts
            before = self._previous.get(key)
            if dt > 0 and before is not None:
                rates[key] = (
                    max(0, counts[0] - before[0]) / dt,
                    max(0, counts[1] - before[1]) / dt,
                )
            else:
                rates[key] = (0.0, 0.0)

        def pps(name: str) -> str:
            if dt <= 0 or name not in self._previous_globals or name not in globals_:
                return "-"
            return f"{max(0.0, globals_[name] - self._previous_globals[name]) / dt:.0f}"

        lines = [
            f"pyrtpproxy top - {time.strftime('%H:%M:%S')}   sessions: {listing.total}   "
            f"created: {globals_.get('nsess_created', 0):.0f}   "
            f"timed out: {globals_.get('nsess_timeout', 0):.0f}",
            f"packets/s  received: {pps('npkts_rcvd')}   relayed: {pps('npkts_relayed')}   "
            f"discarded: {pps('npkts_discard')}        (q or Ctrl-C quits)",
            "",
            SESSION_HEADER,
        ]
        ordered = sorted(listing.sessions, key=lambda i: -sum(rates[(i.call_id, i.tag)]))
        room = max(1, height - len(lines) - 1)
        for item in ordered[:room]:
            lines.append(format_session(item, rates[(item.call_id, item.tag)]))
        if len(ordered) > room:
            lines.append(f"... {len(ordered) - room} more")
        self._previous_at = now
        self._previous_globals = globals_
        self._previous = current
        return lines


@contextlib.contextmanager
def _cbreak(stream: TextIO) -> Iterator[bool]:
    """Single-key input on a terminal; yields whether keys can be read."""
    if not stream.isatty():
        yield False
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(interval: float, keys: bool) -> bool:
    """Sleep ``interval``; True if 'q' was pressed meanwhile."""
    if not keys:
        time.sleep(interval)
        return False
    deadline = time.monotonic() + interval
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready:
            key = os.read(sys.stdin.fileno(), 1)
            if key in (b"q", b"Q", b"\x03", b""):
                return True
    return False


def run_top(client: ControlClient, interval: float, iterations: int, limit: int) -> None:
    """Refresh until 'q', Ctrl-C or ``iterations`` frames (0 = no limit)."""
    view = TopView()
    ansi = sys.stdout.isatty()
    frames = 0
    with _cbreak(sys.stdin) as keys:
        try:
            while True:
                listing = fetch_sessions(client, limit)
                globals_ = _global_counters(client)
                height = shutil.get_terminal_size((120, 40)).lines if ansi else 10_000
                lines = view.frame(listing, globals_, height)
                if ansi:
                    sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
                else:
                    sys.stdout.write("\n".join(lines) + "\n\n")
                sys.stdout.flush()
                frames += 1
                if iterations and frames >= iterations:
                    break
                if _wait_for_quit(interval, keys):
                    break
        except KeyboardInterrupt:
            pass
