"""When the relay writes its journal (pyrtpproxy.state.JournalWriter), on a clock the
test moves: soon after a change, coalesced; once a second while sessions exist; spaced
by the writes' cost; never two at once; the last state at exit."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyrtpproxy.state import COST_SHARE, SOON, JournalWriter


class Handle:
    def __init__(self, loop: FakeLoop, at: float, callback: Callable[[], None]) -> None:
        self.at, self.callback, self.cancelled = at, callback, False
        loop.timers.append(self)

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The parts of an event loop the writer uses; timers run when the test says."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Handle] = []
        self.from_worker: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self.called_back = threading.Event()
        self.sessions = 0  # how many sessions the export finds

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        return Handle(self, self.now + delay, callback)

    def call_soon_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        self.from_worker.append((callback, args))
        self.called_back.set()

    def advance(self, seconds: float) -> None:
        """Move the clock and run the timers that are due."""
        self.now += seconds
        for handle in [h for h in self.timers if h.at <= self.now and not h.cancelled]:
            self.timers.remove(handle)
            handle.callback()

    def finish_write(self) -> None:
        """Wait for the worker's write and run its completion on "the loop"."""
        assert self.called_back.wait(10.0)
        self.called_back.clear()
        callback, args = self.from_worker.pop(0)
        callback(*args)


def _writer(tmp_path: Path, sessions: int = 0) -> tuple[JournalWriter, FakeLoop, list[int]]:
    """A writer whose export counts its calls (in ``exports``, the sessions it found)."""
    loop = FakeLoop()
    exports: list[int] = []
    loop.sessions = sessions

    def export() -> list[Any]:
        exports.append(loop.sessions)
        return [()] * loop.sessions  # stand-ins: the writer only counts them

    writer = JournalWriter(str(tmp_path / "state.json"), loop, export)  # type: ignore[arg-type]
    return writer, loop, exports


def test_changes_are_written_soon_and_coalesced(tmp_path: Path) -> None:
    writer, loop, exports = _writer(tmp_path)
    writer.soon()
    writer.soon()
    loop.advance(SOON / 2)
    assert exports == []
    loop.advance(SOON / 2)
    assert len(exports) == 1
    loop.finish_write()
    assert writer.stats.writes == 1
    assert json.loads((tmp_path / "state.json").read_bytes())["sessions"] == []
    writer.close()


def test_ticks_write_once_a_second_while_sessions_exist(tmp_path: Path) -> None:
    writer, loop, exports = _writer(tmp_path, sessions=3)
    writer.tick(sessions=3)
    loop.finish_write()
    loop.advance(0.5)
    writer.tick(sessions=3)
    assert len(exports) == 1  # not yet a second
    loop.advance(0.5)
    writer.tick(sessions=3)
    loop.finish_write()
    assert len(exports) == 2
    loop.advance(1.0)
    loop.sessions = 0
    writer.tick(sessions=0)  # the last sessions went: one write says so
    loop.finish_write()
    loop.advance(1.0)
    writer.tick(sessions=0)
    assert exports == [3, 3, 0]
    writer.close()


def test_costly_writes_are_spaced_out(tmp_path: Path) -> None:
    writer, loop, exports = _writer(tmp_path)
    writer.tick(sessions=1)
    loop.finish_write()
    writer.stats.last_seconds = 0.2  # a big table: 4 s between writes
    assert writer.spacing == 0.2 * COST_SHARE
    for _ in range(3):
        loop.advance(1.0)
        writer.tick(sessions=1)
    assert len(exports) == 1
    writer.soon()  # a change waits for the spacing too
    loop.advance(0.5)
    assert len(exports) == 1
    loop.advance(0.5)
    assert len(exports) == 2
    loop.finish_write()
    writer.close()


def test_one_write_at_a_time_then_the_latest(tmp_path: Path) -> None:
    writer, loop, exports = _writer(tmp_path)
    writer.write()
    writer.write()  # the first is still in the worker: noted, not started
    assert len(exports) == 1
    loop.finish_write()
    loop.advance(writer.spacing)  # SOON, or more if the real write was slow
    assert len(exports) == 2
    loop.finish_write()
    writer.write_now()  # at exit: on the spot
    assert len(exports) == 3 and writer.stats.writes == 3
    writer.close()
