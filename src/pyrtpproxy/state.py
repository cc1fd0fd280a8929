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
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .engine.addresses import Endpoint, LocalAddress
from .engine.persist import STREAM_COUNTERS, LegState, SessionState, StreamState
from .engine.taps import Direction, Recording, Tap, UdpCopy

log = logging.getLogger("pyrtpproxy.state")

FORMAT = "pyrtpproxy-state"
VERSION = 1
SOON = 0.1  # seconds from a command that changed sessions to the write that keeps it
BAD_SUFFIX = ".bad"

Json = Any  # a decoded JSON value


class JournalError(ValueError):
    """A journal that cannot be used at all (not JSON, another format or version)."""


# --- values <-> JSON ------------------------------------------------------------------


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1")


def _raw(text: Json) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError("expected a string")
    return text.encode("latin-1")


def _wall(offset: float | None, written_at: float) -> float | None:
    return None if offset is None else written_at + offset


def _offset(wall: Json, wall_now: float) -> float | None:
    if wall is None:
        return None
    return float(wall) - wall_now


def _endpoint(value: Json) -> Endpoint | None:
    if value is None:
        return None
    host, port = value
    if not isinstance(host, str) or not isinstance(port, int):
        raise TypeError("bad endpoint")
    return Endpoint(host, port)


def _local_json(local: LocalAddress) -> Json:
    return {
        "host": local.host,
        "ipv6": local.ipv6,
        "advertised": local.advertised,
        "label": local.label,
    }


def _local(value: Json) -> LocalAddress:
    return LocalAddress(
        str(value["host"]),
        ipv6=bool(value["ipv6"]),
        advertised=value["advertised"],
        label=value["label"],
    )


def _tap_json(tap: Tap) -> Json:
    if isinstance(tap, UdpCopy):
        return {
            "kind": "copy",
            "dest": list(tap.dest),
            "local": _local_json(tap.local),
            "port": tap.port,
            "rtcp": tap.rtcp,
        }
    return {
        "kind": "recording",
        "call_id": _text(tap.call_id),
        "tag": _text(tap.tag),
        "direction": None if tap.direction is None else tap.direction.value,
        "name": _text(tap.name),
        "single_file": tap.single_file,
        "pcap": tap.pcap,
        "rtcp": tap.rtcp,
    }


def _tap(value: Json) -> Tap | None:
    if value is None:
        return None
    if value["kind"] == "copy":
        dest = _endpoint(value["dest"])
        assert dest is not None
        return UdpCopy(dest, _local(value["local"]), int(value["port"]), bool(value["rtcp"]))
    if value["kind"] != "recording":
        raise ValueError(f"unknown tap kind {value['kind']!r}")
    call_id, tag = _raw(value["call_id"]), _raw(value["tag"])
    if call_id is None or tag is None:
        raise ValueError("a recording needs call-id and tag")
    direction = value["direction"]
    return Recording(
        call_id=call_id,
        tag=tag,
        direction=None if direction is None else Direction(direction),
        name=_raw(value["name"]),
        single_file=bool(value["single_file"]),
        pcap=bool(value["pcap"]),
        rtcp=bool(value["rtcp"]),
    )


def _stream_json(stream: StreamState, written_at: float) -> Json:
    return {
        "remote": None if stream.remote is None else list(stream.remote),
        "latched": stream.latched,
        "from_media": stream.from_media,
        "last_ssrc": stream.last_ssrc,
        "last_seq": stream.last_seq,
        "signalled_at": _wall(stream.signalled_at, written_at),
        "sampled_at": _wall(stream.sampled_at, written_at),
        "seen_at": _wall(stream.seen_at, written_at),
        "relatch_count": stream.relatch_count,
        "counters": dict(zip(STREAM_COUNTERS, stream.counters, strict=True)),
    }


def _stream(value: Json, wall_now: float) -> StreamState:
    counters = value["counters"]
    ssrc = value["last_ssrc"]
    return StreamState(
        remote=_endpoint(value["remote"]),
        latched=bool(value["latched"]),
        from_media=bool(value["from_media"]),
        last_ssrc=None if ssrc is None else int(ssrc),
        last_seq=int(value["last_seq"]),
        signalled_at=_offset(value["signalled_at"], wall_now),
        sampled_at=_offset(value["sampled_at"], wall_now),
        seen_at=_offset(value["seen_at"], wall_now),
        relatch_count=int(value["relatch_count"]),
        counters=tuple(int(counters[name]) for name in STREAM_COUNTERS),
    )


def _leg_json(leg: LegState, written_at: float) -> Json:
    return {
        "port": leg.port,
        "local": None if leg.local is None else _local_json(leg.local),
        "asymmetric": leg.asymmetric,
        "weak": leg.weak,
        "on_hold": leg.on_hold,
        "codecs": _text(leg.codecs),
        "expires_at": _wall(leg.expires_at, written_at),
        "ttl": leg.ttl,
        "tap": None if leg.tap is None else _tap_json(leg.tap),
        "rtp": _stream_json(leg.rtp, written_at),
        "rtcp": _stream_json(leg.rtcp, written_at),
    }


def _leg(value: Json, wall_now: float) -> LegState:
    port = int(value["port"])
    if not 0 <= port <= 65534:
        raise ValueError(f"bad port {port}")
    ttl = value["ttl"]
    return LegState(
        port=port,
        local=None if value["local"] is None else _local(value["local"]),
        asymmetric=bool(value["asymmetric"]),
        weak=bool(value["weak"]),
        on_hold=bool(value["on_hold"]),
        codecs=_raw(value["codecs"]),
        expires_at=_offset(value["expires_at"], wall_now),
        ttl=None if ttl is None else int(ttl),
        tap=_tap(value["tap"]),
        rtp=_stream(value["rtp"], wall_now),
        rtcp=_stream(value["rtcp"], wall_now),
    )


def _session_json(session: SessionState, written_at: float) -> Json:
    return {
        "call_id": _text(session.call_id),
        "tag": _text(session.tag),
        "created_at": written_at + session.created_at,
        "complete": session.complete,
        "strong": session.strong,
        "notify_target": _text(session.notify_target),
        "notify_tag": _text(session.notify_tag),
        "notify_source": session.notify_source,
        "legs": [_leg_json(leg, written_at) for leg in session.legs],
    }


def _session(value: Json, wall_now: float) -> SessionState:
    call_id, tag = _raw(value["call_id"]), _raw(value["tag"])
    if not call_id or not tag:
        raise ValueError("a session needs a call-id and a tag")
    a, b = value["legs"]
    source = value["notify_source"]
    return SessionState(
        call_id=call_id,
        tag=tag,
        created_at=float(value["created_at"]) - wall_now,
        complete=bool(value["complete"]),
        strong=bool(value["strong"]),
        notify_target=_raw(value["notify_target"]),
        notify_tag=_raw(value["notify_tag"]),
        notify_source=None if source is None else str(source),
        legs=(_leg(a, wall_now), _leg(b, wall_now)),
    )


def encode(sessions: list[SessionState], written_at: float) -> bytes:
    """The journal's bytes for ``sessions`` exported at wall-clock time ``written_at``."""
    document = {
        "format": FORMAT,
        "version": VERSION,
        "written_at": written_at,
        "pid": os.getpid(),
        "sessions": [_session_json(session, written_at) for session in sessions],
    }
    return json.dumps(document, separators=(",", ":")).encode("ascii")


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
    if document.get("version") != VERSION:
        raise JournalError(
            f"journal version {document.get('version')!r}, this relay reads version {VERSION}"
        )
    entries = document.get("sessions")
    if not isinstance(entries, list):
        raise JournalError("the journal has no session list")
    sessions: list[SessionState] = []
    bad: list[str] = []
    for index, entry in enumerate(entries):
        try:
            sessions.append(_session(entry, wall_now))
        except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as exc:
            call_id = entry.get("call_id") if isinstance(entry, dict) else None
            bad.append(f"entry {index} (call-id={call_id!r}): {type(exc).__name__}: {exc}")
    return Decoded(sessions, bad)


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
    last_seconds: float = 0.0


class JournalWriter:
    """Writes the journal off the packet path: :meth:`soon` after a command changed
    sessions, :meth:`tick` once a second while there are sessions (latched addresses,
    counters and packet times move without commands), :meth:`write_now` at exit.

    Sessions are exported on the event loop (a consistent view); encoding and the file
    work run in one worker thread, one write at a time, later requests coalesced.
    """

    def __init__(
        self,
        path: str,
        loop: asyncio.AbstractEventLoop,
        export: Callable[[], list[SessionState]],
    ) -> None:
        self.path = path
        self.stats = JournalStats()
        self._loop = loop
        self._export = export
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._soon: asyncio.TimerHandle | None = None
        self._busy = False
        self._again = False
        self._failing = False
        self._empty_written = False

    def soon(self) -> None:
        """Sessions changed: write within :data:`SOON` seconds."""
        if self._soon is None:
            self._soon = self._loop.call_later(SOON, self._write_soon)

    def _write_soon(self) -> None:
        self._soon = None
        self.write()

    def tick(self, sessions: int) -> None:
        """The once-a-second write; nothing to do when there were and are no sessions."""
        if sessions or not self._empty_written:
            self.write()

    def write(self) -> None:
        """Export now and write in the worker (or right after the write in progress)."""
        if self._busy:
            self._again = True
            return
        sessions = self._export()
        self._empty_written = not sessions
        self._busy = True
        future = self._pool.submit(self._write_file, sessions, time.time())
        future.add_done_callback(lambda done: self._loop.call_soon_threadsafe(self._written, done))

    def _write_file(self, sessions: list[SessionState], written_at: float) -> float:
        started = time.perf_counter()
        write_atomically(self.path, encode(sessions, written_at))
        return time.perf_counter() - started

    def _written(self, done: concurrent.futures.Future[float]) -> None:
        self._busy = False
        exc = done.exception()
        if exc is None:
            self.stats.writes += 1
            self.stats.last_seconds = done.result()
            if self._failing:
                log.warning("state file %s is written again", self.path)
            self._failing = False
        else:
            self.stats.failures += 1
            if not self._failing:  # once per failing spell, not once a second
                log.error("cannot write the state file %s: %s", self.path, exc)
            self._failing = True
        if self._again:
            self._again = False
            self.write()

    def write_now(self) -> None:
        """The final write, on the caller's thread, after the one in progress."""
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        self._pool.shutdown(wait=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._busy = self._again = False
        try:
            self._write_file(self._export(), time.time())
            self.stats.writes += 1
        except OSError as exc:
            self.stats.failures += 1
            log.error("cannot write the state file %s: %s", self.path, exc)

    def close(self) -> None:
        """Stop the worker (after the write in progress)."""
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        with contextlib.suppress(RuntimeError):
            self._pool.shutdown(wait=True)
