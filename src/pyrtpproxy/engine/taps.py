"""Taps: a recording or a copy attached to one leg (media-features.md §1, §2).

Pure values. The engine decides which leg gets which tap (``R``, ``C``, ``N``, ``-a``)
and emits :class:`~pyrtpproxy.engine.events.TapStarted` and ``TapStopped``; the media
layer opens the files or the copy's sockets when the host probe is asked
(``HostProbe.open_tap``, because the reply says whether that worked) and feeds every
packet the leg receives to them. A leg holds at most one tap: ``R``, ``C`` and ``-a``
share the slot, as in rtpproxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .addresses import Endpoint, LocalAddress


class Direction(Enum):
    """Whose media a per-leg recording holds, as rtpproxy names its files."""

    ORIGINATOR = "o"  # leg B: the offerer's (creating tag's) media
    ANSWERER = "a"  # leg A


@dataclass(frozen=True, slots=True)
class RecordingPolicy:
    """What ``-r``/``-P``/``-R``/``-a`` (and ``--record-both``) ask for."""

    pcap: bool = False
    rtcp: bool = True
    record_all: bool = False
    both_directions: bool = False


@dataclass(frozen=True, slots=True)
class Recording:
    """Record the leg's media into files.

    ``R`` names them after ``call_id`` and the creating ``tag`` (cut at its first ``;``),
    with ``.o``/``.a`` per leg unless ``single_file``; a ``C`` file target names them
    ``name``. Single-file taps with the same names share one file (both legs of a call).
    """

    call_id: bytes
    tag: bytes
    direction: Direction | None  # None: one file for both legs, or a C file target
    name: bytes | None  # a C target's file name; None for R and -a
    single_file: bool
    pcap: bool
    rtcp: bool


@dataclass(frozen=True, slots=True)
class UdpCopy:
    """Send a copy of every packet the leg receives: RTP to ``dest``, RTCP to its port
    + 1, from the local pair ``local``:``port``/``port + 1``."""

    dest: Endpoint
    local: LocalAddress
    port: int
    rtcp: bool


Tap = Recording | UdpCopy


def creating_tag(tag: bytes) -> bytes:
    """The session's creating tag cut at its first ``;`` (file names ignore ``;N``)."""
    return tag.split(b";", 1)[0]


def leg_recording(
    call_id: bytes, tag: bytes, direction: Direction, single_file: bool, policy: RecordingPolicy
) -> Recording:
    """The recording ``R`` (or ``-a``) gives a leg of the session ``call_id``/``tag``."""
    return Recording(
        call_id=call_id,
        tag=creating_tag(tag),
        direction=None if single_file else direction,
        name=None,
        single_file=single_file,
        pcap=policy.pcap,
        rtcp=policy.rtcp,
    )


class BadCopyTarget(ValueError):
    """A ``C`` target that is not ``udp:HOST:PORT`` with a usable port."""


def split_udp_target(target: bytes, rtcp: bool) -> tuple[str, int] | None:
    """``udp:HOST:PORT`` → ``(HOST, PORT)``; None for a file target. HOST is split off at
    the last ``:``; IPv6 is not supported; PORT + 1 must be a port too unless RTCP is
    not copied (media-features.md §2)."""
    if not target.startswith(b"udp:"):
        return None
    host_bytes, colon, port_bytes = target[4:].rpartition(b":")
    if not colon or not host_bytes or not port_bytes.isdigit() or len(port_bytes) > 5:
        raise BadCopyTarget(f"bad copy target {target!r}")
    host = host_bytes.decode("latin-1")
    if ":" in host or host.startswith("["):
        raise BadCopyTarget("IPv6 copy targets are not supported")
    port = int(port_bytes)
    if port > (65534 if rtcp else 65535):
        raise BadCopyTarget(f"copy port {port} out of range")
    return host, port
