"""What a tapped leg's packets go to: recording files or a UDP copy (media-features.md
§1.6 to §1.8, §2). The engine decides who is tapped; this module only writes and sends.

A packet is fed here when the leg received it on a complete session and the latching
rules accepted it, whether or not it could be relayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..engine.counters import RelayCounters
from ..engine.session import Leg, Stream
from ..engine.taps import Recording, UdpCopy
from ..net import MediaSocket
from .record import (
    RecordDirs,
    RecordFormat,
    copy_file_names,
    copy_single_file_name,
    leg_file_names,
    single_file_name,
)
from .record import Recording as RecordingFile

log = logging.getLogger("pyrtpproxy.record")

Address = tuple[str, int]
LocalOf = Callable[[Stream, Address], Address]
ErrorSink = Callable[[Leg, OSError], None]


class TapSink(Protocol):
    """An open tap of one leg."""

    def feed(self, stream: Stream, packet: bytes, src: Address, when: float) -> None:
        """One packet the leg accepted, from ``src``, at ``when`` (wall clock)."""

    def flush(self) -> None:
        """Write out what is buffered."""

    def close(self) -> None:
        """Stop; files are flushed, closed and moved out of the spool."""


class SharedFile:
    """A single-file recording both legs of a call may write to; closed with its last
    user (media-features.md §1.3)."""

    def __init__(self, name: str, file: RecordingFile) -> None:
        self.name = name
        self.file = file
        self.users = 0


class FileTap:
    """A leg's recording: an RTP and an RTCP file, or one shared pcap file."""

    def __init__(
        self,
        leg: Leg,
        tap: Recording,
        rtp: RecordingFile | SharedFile,
        rtcp: RecordingFile | None,
        local_of: LocalOf,
        release: Callable[[SharedFile], None],
    ) -> None:
        self._leg = leg
        self._tap = tap
        self._rtp = rtp
        self._rtcp = rtcp
        self._local_of = local_of
        self._release = release

    def feed(self, stream: Stream, packet: bytes, src: Address, when: float) -> None:
        if stream.is_rtcp and not self._tap.rtcp:
            return
        if isinstance(self._rtp, SharedFile):
            if stream.is_rtcp:
                # one file for the call: RTCP is shown as the relay sends it on
                peer = stream.peer
                dest = peer.remote
                if dest is None:
                    return
                self._rtp.file.write(packet, self._local_of(peer, dest), dest, when)
            else:
                self._rtp.file.write(packet, src, self._local_of(stream, src), when)
            return
        file = self._rtcp if stream.is_rtcp else self._rtp
        if file is not None:
            file.write(packet, src, self._local_of(stream, src), when)

    def flush(self) -> None:
        if isinstance(self._rtp, SharedFile):
            self._rtp.file.flush()
        else:
            self._rtp.flush()
        if self._rtcp is not None:
            self._rtcp.flush()

    def close(self) -> None:
        if isinstance(self._rtp, SharedFile):
            self._release(self._rtp)
        else:
            self._rtp.close()
        if self._rtcp is not None:
            self._rtcp.close()


class CopyTap:
    """Copies of a leg's packets sent from a port pair of their own."""

    def __init__(
        self, tap: UdpCopy, rtp: MediaSocket, rtcp: MediaSocket, counters: RelayCounters
    ) -> None:
        self._rtp_dest = (tap.dest.host, tap.dest.port)
        self._rtcp_dest = (tap.dest.host, tap.dest.port + 1)
        self._copy_rtcp = tap.rtcp
        self._rtp = rtp
        self._rtcp = rtcp
        self._counters = counters

    def feed(self, stream: Stream, packet: bytes, src: Address, when: float) -> None:
        try:
            if not stream.is_rtcp:
                self._rtp.sendto(packet, self._rtp_dest)
            elif self._copy_rtcp:
                self._rtcp.sendto(packet, self._rtcp_dest)
        except OSError:
            self._counters.send_errors += 1  # as for relayed packets

    def flush(self) -> None:
        return None

    def sockets(self) -> tuple[MediaSocket, MediaSocket]:
        """The pair the copies leave from (a hand-over passes them on)."""
        return self._rtp, self._rtcp

    def close(self) -> None:
        self._rtp.close()
        self._rtcp.close()


class TapOpener:
    """Opens taps for the host probe: the files of a recording, the sockets of a copy."""

    def __init__(self, dirs: RecordDirs | None, on_error: ErrorSink) -> None:
        self._dirs = dirs
        self._on_error = on_error
        self._shared: dict[str, SharedFile] = {}

    def open_recording(
        self, leg: Leg, tap: Recording, local_of: LocalOf, append: bool = False
    ) -> FileTap | None:
        """The files of ``tap`` for ``leg``, or None if one cannot be created;
        ``append``: continue files a previous process wrote (a restored session)."""
        dirs = self._dirs
        if dirs is None:
            return None
        fmt = RecordFormat.PCAP if tap.pcap else RecordFormat.ADHOC
        if tap.single_file:
            name = (
                copy_single_file_name(tap.name)
                if tap.name is not None
                else single_file_name(tap.call_id, tap.tag)
            )
            shared = self._shared.get(name)
            if shared is None:
                file = self._open(dirs, name, fmt, leg, append)
                if file is None:
                    return None
                shared = self._shared[name] = SharedFile(name, file)
            shared.users += 1
            return FileTap(leg, tap, shared, None, local_of, self._release)
        if tap.name is not None:
            rtp_name, rtcp_name = copy_file_names(tap.name)
        else:
            assert tap.direction is not None  # per-leg files name their direction
            rtp_name, rtcp_name = leg_file_names(tap.call_id, tap.tag, tap.direction)
        rtp = self._open(dirs, rtp_name, fmt, leg, append)
        if rtp is None:
            return None
        rtcp = None
        if tap.rtcp:
            rtcp = self._open(dirs, rtcp_name, fmt, leg, append)
            if rtcp is None:
                rtp.close()
                return None
        return FileTap(leg, tap, rtp, rtcp, local_of, self._release)

    def _open(
        self, dirs: RecordDirs, name: str, fmt: RecordFormat, leg: Leg, append: bool
    ) -> RecordingFile | None:
        try:
            return RecordingFile.open(
                dirs, name, fmt, on_error=lambda file, exc: self._on_error(leg, exc), append=append
            )
        except (OSError, ValueError) as exc:
            log.warning(
                "cannot record call-id=%r: %s: %s",
                leg.session.call_id.decode("latin-1"),
                Path(dirs.spool_dir or dirs.record_dir) / name,
                getattr(exc, "strerror", None) or exc,
            )
            return None

    def _release(self, shared: SharedFile) -> None:
        shared.users -= 1
        if shared.users <= 0:
            shared.file.close()
            del self._shared[shared.name]

    def close_all(self) -> None:
        """Close every shared file still open (shutdown)."""
        for shared in list(self._shared.values()):
            shared.file.close()
        self._shared.clear()
