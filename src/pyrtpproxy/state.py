"""The session journal behind ``--state-file``: sessions survive a restart or a crash.

The engine exports its sessions as values (:mod:`pyrtpproxy.engine.persist`); this
module writes them as one versioned JSON document, atomically: a temporary file in the
same directory is written, fsynced and renamed over the journal, and the directory is
fsynced. A crash at any moment leaves either the previous journal or the new one, never
a mix. Times are stored as wall-clock times (the engine's clock is monotonic and starts
anew with each process) and converted back at restore, so a call that was idle across a
crash still times out on schedule.

:func:`load` never raises: a missing journal is no sessions; an unreadable, corrupt or
foreign one is logged, set aside as ``PATH.bad`` for the operator, and no sessions are
restored from it; an entry that does not parse is skipped alone. The relay then starts
normally, so a bad journal cannot cause a crash loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import gc
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .engine.addresses import Endpoint, LocalAddress
from .engine.counters import RelayCounters
from .engine.persist import STREAM_COUNTERS, LegState, SessionState, StreamState
from .engine.taps import Direction, Recording, Tap, UdpCopy

log = logging.getLogger("pyrtpproxy.state")

FORMAT = "pyrtpproxy-state"
VERSION = 1
SOON = 0.1  # seconds from a command that changed sessions to the write that keeps it
PERIOD = 1.0  # seconds between writes while sessions exist (counters, packet times move)
COST_SHARE = 20  # a write's cost in seconds, times this, is the least time to the next
TICK_SLACK = 0.1  # a tick this early still writes (the once-a-second timer jitters)
BAD_SUFFIX = ".bad"

Json = Any  # a decoded JSON value


class JournalError(ValueError):
    """A journal that cannot be used at all (not JSON, another format or version)."""


# --- values <-> JSON ------------------------------------------------------------------
#
# The engine's values are tuples and go out as JSON arrays as they are (a journal of
# thousands of sessions is written every second or so); the document names the fields
# of each array ("layout"), and one that differs is another version. Bytes (call-ids,
# tags) are latin-1 text. Times are seconds relative to "written_at", the wall clock
# at the export: a deadline is written_at + its offset, in wall-clock time.


def _json_default(value: object) -> Json:
    """What JSON has no type for: bytes, addresses, taps."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, LocalAddress):
        return [value.host, value.ipv6, value.advertised, value.label]
    if isinstance(value, UdpCopy):
        return ["copy", value.dest, value.local, value.port, value.rtcp]
    if isinstance(value, Recording):
        return [
            "recording",
            value.call_id,
            value.tag,
            None if value.direction is None else value.direction.value,
            value.name,
            value.single_file,
            value.pcap,
            value.rtcp,
        ]
    raise TypeError(f"cannot store {type(value).__name__}")


LAYOUT = {
    "session": list(SessionState._fields),
    "leg": list(LegState._fields),
    "stream": list(StreamState._fields),
    "counters": list(STREAM_COUNTERS),
}


def encode(sessions: list[SessionState], written_at: float) -> bytes:
    """The journal's bytes for ``sessions`` exported at wall-clock time ``written_at``."""
    document = {
        "format": FORMAT,
        "version": VERSION,
        "layout": LAYOUT,
        "written_at": written_at,
        "pid": os.getpid(),
        "sessions": sessions,
    }
    return json.dumps(document, separators=(",", ":"), default=_json_default).encode("ascii")


def _fields(value: Json, count: int, what: str) -> list[Json]:
    if not isinstance(value, list) or len(value) != count:
        raise ValueError(f"{what}: expected {count} fields")
    return value


def _raw(text: Json) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError("expected a string")
    return text.encode("latin-1")


def _int(value: Json) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _host(value: Json, wildcard: bool = False) -> str:
    """A numeric address, as sockets give them (``""``: the wildcard, where allowed)."""
    if not isinstance(value, str):
        raise TypeError("expected an address")
    if value == "" and wildcard:
        return value
    return ipaddress.ip_address(value).compressed  # ValueError for anything else


def _endpoint(value: Json) -> Endpoint | None:
    if value is None:
        return None
    host, port = _fields(value, 2, "endpoint")
    if not 0 <= _int(port) <= 65535:
        raise ValueError(f"bad port {port}")
    return Endpoint(_host(host), port)


def _optional_text(value: Json) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _local(value: Json) -> LocalAddress | None:
    if value is None:
        return None
    host, ipv6, advertised, label = _fields(value, 4, "address")
    return LocalAddress(
        _host(host, wildcard=True),
        ipv6=bool(ipv6),
        advertised=_optional_text(advertised),
        label=_optional_text(label),
    )


def _tap(value: Json) -> Tap | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError("bad tap")
    if value[0] == "copy":
        _kind, dest, local, port, rtcp = _fields(value, 5, "copy")
        endpoint, address = _endpoint(dest), _local(local)
        if endpoint is None or address is None:
            raise ValueError("a copy needs a destination and a local address")
        return UdpCopy(endpoint, address, _int(port), bool(rtcp))
    if value[0] != "recording":
        raise ValueError(f"unknown tap kind {value[0]!r}")
    _kind, call_id, tag, direction, name, single_file, pcap, rtcp = _fields(value, 8, "tap")
    call, creating = _raw(call_id), _raw(tag)
    if call is None or creating is None:
        raise ValueError("a recording needs call-id and tag")
    return Recording(
        call_id=call,
        tag=creating,
        direction=None if direction is None else Direction(direction),
        name=_raw(name),
        single_file=bool(single_file),
        pcap=bool(pcap),
        rtcp=bool(rtcp),
    )


def _time(offset: Json, shift: float) -> float | None:
    return None if offset is None else float(offset) + shift


def _stream(value: Json, shift: float) -> StreamState:
    remote, latched, from_media, ssrc, seq, signalled, sampled, seen, relatches, counters = _fields(
        value, len(StreamState._fields), "stream"
    )
    return StreamState(
        remote=_endpoint(remote),
        latched=bool(latched),
        from_media=bool(from_media),
        last_ssrc=None if ssrc is None else _int(ssrc),
        last_seq=_int(seq),
        signalled_at=_time(signalled, shift),
        sampled_at=_time(sampled, shift),
        seen_at=_time(seen, shift),
        relatch_count=_int(relatches),
        counters=tuple(_int(c) for c in _fields(counters, len(STREAM_COUNTERS), "counters")),
    )


def _leg(value: Json, shift: float) -> LegState:
    port, local, asymmetric, weak, on_hold, codecs, expires_at, ttl, tap, rtp, rtcp = _fields(
        value, len(LegState._fields), "leg"
    )
    if not 0 <= _int(port) <= 65534:
        raise ValueError(f"bad port {port}")
    return LegState(
        port=port,
        local=_local(local),
        asymmetric=bool(asymmetric),
        weak=bool(weak),
        on_hold=bool(on_hold),
        codecs=_raw(codecs),
        expires_at=_time(expires_at, shift),
        ttl=None if ttl is None else _int(ttl),
        tap=_tap(tap),
        rtp=_stream(rtp, shift),
        rtcp=_stream(rtcp, shift),
    )


def _session(value: Json, shift: float) -> SessionState:
    call_id, tag, created_at, complete, strong, target, notify_tag, source, legs = _fields(
        value, len(SessionState._fields), "session"
    )
    call, creating = _raw(call_id), _raw(tag)
    if not call or not creating:
        raise ValueError("a session needs a call-id and a tag")
    a, b = _fields(legs, 2, "legs")
    return SessionState(
        call_id=call,
        tag=creating,
        created_at=float(created_at) + shift,
        complete=bool(complete),
        strong=bool(strong),
        notify_target=_raw(target),
        notify_tag=_raw(notify_tag),
        notify_source=None if source is None else str(source),
        legs=(_leg(a, shift), _leg(b, shift)),
    )


class Decoded(NamedTuple):
    """A journal's sessions (times relative to the wall-clock ``now`` of decoding) and
    a line per entry that could not be read."""

    sessions: list[SessionState]
    bad_entries: list[str]


def decode(data: bytes, wall_now: float) -> Decoded:
    """Read a journal; raises :class:`JournalError` if it cannot be used at all."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise JournalError(f"not a journal (corrupt): {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise JournalError("not a pyrtpproxy state journal")
    if document.get("version") != VERSION or document.get("layout") != LAYOUT:
        raise JournalError(
            f"journal version {document.get('version')!r}, this relay reads version {VERSION}"
        )
    entries = document.get("sessions")
    written_at = document.get("written_at")
    if not isinstance(entries, list) or not isinstance(written_at, (int, float)):
        raise JournalError("the journal has no session list")
    shift = written_at - wall_now  # how long ago it was written, negated
    sessions: list[SessionState] = []
    bad: list[str] = []
    for index, entry in enumerate(entries):
        try:
            sessions.append(_session(entry, shift))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            call_id = entry[0] if isinstance(entry, list) and entry else None
            bad.append(f"entry {index} (call-id={call_id!r}): {exc}")
    return Decoded(sessions, bad)


@contextlib.contextmanager
def without_gc() -> Iterator[None]:
    """Building or reading thousands of sessions' tuples would run the cyclic garbage
    collector over every object many times; they hold no cycles, so pause it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- the file -------------------------------------------------------------------------


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str, wall_now: float | None = None) -> list[SessionState]:
    """The sessions in the journal at ``path``, never raising (see the module doc)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.error("cannot read the state file %s: %s; no sessions restored", path, exc.strerror)
        return []
    try:
        with without_gc():
            decoded = decode(data, time.time() if wall_now is None else wall_now)
    except JournalError as exc:
        aside = path + BAD_SUFFIX
        try:
            os.replace(path, aside)
            kept = f"kept as {aside}"
        except OSError as move:
            kept = f"cannot keep it as {aside}: {move.strerror}"
        log.error("state file %s: %s; no sessions restored (%s)", path, exc, kept)
        return []
    for line in decoded.bad_entries:
        log.error("state file %s: skipped %s", path, line)
    return decoded.sessions


class StateLock:
    """An exclusive ``flock`` on ``PATH.lock`` while a relay owns the journal: a second
    relay with the same ``--state-file`` knows one is running. A crash drops it."""

    def __init__(self, state_file: str) -> None:
        self.path = state_file + ".lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Let the next relay have it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- writing from the running relay ---------------------------------------------------


@dataclass
class JournalStats:
    """How the journal writes have gone (logs and tests)."""

    writes: int = 0
    failures: int = 0
    last_seconds: float = 0.0  # the last write's cost: export on the loop + encode + file


class JournalWriter:
    """Writes the journal off the packet path: :meth:`soon` after a command changed
    sessions, :meth:`tick` (once a second) while there are sessions, since latched
    addresses, counters and packet times move without commands, :meth:`write_now` at
    exit.

    Sessions are exported on the event loop (a consistent view); encoding and the file
    work run in one worker thread, one write at a time, later requests coalesced. The
    writes are spaced by at least :data:`COST_SHARE` times the last one's cost, so the
    journal takes at most about 5 % of the relay's time however many sessions it holds
    (a second apart up to a few thousand sessions on a small machine, more beyond).
    """

    def __init__(
        self,
        path: str,
        loop: asyncio.AbstractEventLoop,
        export: Callable[[], list[SessionState]],
        counters: RelayCounters | None = None,
    ) -> None:
        self.path = path
        self.stats = JournalStats()
        self._counters = counters or RelayCounters()
        self._loop = loop
        self._export = export
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._timer: asyncio.TimerHandle | None = None
        self._last = float("-inf")  # loop time of the last write's start
        self._busy = False
        self._again = False
        self._failing = False
        self._empty_written = False

    @property
    def spacing(self) -> float:
        """The least time between two writes now."""
        return max(SOON, COST_SHARE * self.stats.last_seconds)

    def soon(self) -> None:
        """Sessions changed: write within :data:`SOON` seconds (or once the spacing
        allows)."""
        if self._timer is None:
            wait = max(SOON, self._last + self.spacing - self._loop.time())
            self._timer = self._loop.call_later(wait, self._write_due)

    def _write_due(self) -> None:
        self._timer = None
        self.write()

    def tick(self, sessions: int) -> None:
        """The periodic write; nothing to do when there were and are no sessions."""
        if not sessions and self._empty_written:
            return
        if self._loop.time() + TICK_SLACK >= self._last + max(PERIOD, self.spacing):
            self.write()

    def write(self) -> None:
        """Export now and write in the worker (or right after the write in progress)."""
        if self._busy:
            self._again = True
            return
        started = time.perf_counter()
        self._last = self._loop.time()
        with without_gc():
            sessions = self._export()
        exported = time.perf_counter() - started
        self._empty_written = not sessions
        self._busy = True
        future = self._pool.submit(self._write_file, sessions, time.time())
        future.add_done_callback(
            lambda done: self._loop.call_soon_threadsafe(self._written, done, exported)
        )

    def _write_file(self, sessions: list[SessionState], written_at: float) -> float:
        started = time.perf_counter()
        write_atomically(self.path, encode(sessions, written_at))
        return time.perf_counter() - started

    def _written(self, done: concurrent.futures.Future[float], exported: float) -> None:
        self._busy = False
        exc = done.exception()
        if exc is None:
            self.stats.writes += 1
            self.stats.last_seconds = exported + done.result()
            if self._failing:
                log.warning("state file %s is written again", self.path)
            self._failing = False
        else:
            self.stats.failures += 1
            self._counters.state_write_failures += 1
            if not self._failing:  # once per failing spell, not once a second
                log.error("cannot write the state file %s: %s", self.path, exc)
            self._failing = True
        if self._again:
            self._again = False
            self.soon()

    def write_now(self) -> None:
        """The final write, on the caller's thread, after the one in progress."""
        self._cancel()
        self._pool.shutdown(wait=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._busy = self._again = False
        try:
            with without_gc():
                sessions = self._export()
            self._write_file(sessions, time.time())
            self.stats.writes += 1
        except OSError as exc:
            self.stats.failures += 1
            self._counters.state_write_failures += 1
            log.error("cannot write the state file %s: %s", self.path, exc)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Stop the worker (after the write in progress)."""
        self._cancel()
        with contextlib.suppress(RuntimeError):
            self._pool.shutdown(wait=True)
