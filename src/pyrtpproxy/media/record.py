"""Recording files: the ad-hoc and pcap formats, safe file names, spool -> record move.

Pure file I/O, no asyncio: the relay opens one :class:`Recording` per file, calls
:meth:`Recording.write` for every recorded packet, :meth:`Recording.flush` on a schedule
and :meth:`Recording.close` when the leg stops recording (N, D, X, timeout, shutdown).
Formats and names follow the reference byte for byte (spec media-features.md §1.4-§1.8):

* ad-hoc (no ``-P``): per packet a 30-byte header (family ``2``/``10`` host order, the
  sender's port network order, its address in 16 bytes, arrival time as a host-order
  double, length as a host-order u16), then the packet;
* pcap (``-P``): the classic microsecond pcap, link type Ethernet, every packet wrapped
  in a fake Ethernet + IPv4/IPv6 + UDP header with correct checksums (the reference's
  IPv6 UDP checksum is wrong; ours is right, nothing depends on the wrong one).

File names differ from the reference in one deliberate way: call-ids, tags and copy
names are made safe with :func:`safe_component`, a reversible percent-encoding
(:func:`unsafe_component` undoes it). These bytes become ``%XX`` (upper-case hex):
``%`` itself, ``/``, every byte below ``0x21`` (NUL, control bytes, space), ``0x7f``,
every byte ``>= 0x80``, a ``.`` that starts a call-id, tag or name (so ``.``, ``..`` and
hidden names never occur) and, in tags only, ``=`` (so ``<cid>=<tag>`` splits at its last
``=`` and two calls never share a name). Everything else is kept (letters, digits,
``- _ . @ = + ! * ~ ' ( ) : [ ] < > ? { } , ; &``...), so the names of ordinary SIP
call-ids are the reference's. The reference writes
the bytes as they come: a ``/`` there is a path separator.
"""

from __future__ import annotations

import enum
import errno as errno_codes
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from ..engine.addresses import Endpoint
from ..engine.taps import Direction

log = logging.getLogger("pyrtpproxy.record")

Address = tuple[str, int]
"""A ``(host, port)`` pair; :class:`~pyrtpproxy.engine.addresses.Endpoint` is one."""

BUFFER_SIZE = 4096
"""Bytes buffered per file before they are written (the reference's 4 KiB)."""

# The address families as the reference's files store them (Linux values), not as this
# host's socket module spells them.
FAMILY_INET = 2
FAMILY_INET6 = 10

ADHOC_HEADER = struct.Struct("=H2s16sdH")  # family, port (already big-endian), addr, time, len
PCAP_MAGIC = 0xA1B2C3D4
PCAP_HEADER = struct.Struct("=IHHiIII")
PCAP_RECORD = struct.Struct("=IIII")
PCAP_SNAPLEN = 65535
LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
IPV4_TTL = 127
IPV6_HOP_LIMIT = 64
IPPROTO_UDP = 17
MAX_ADHOC_PAYLOAD = 0xFFFF  # the length field is a u16
MAX_UDP_PAYLOAD = 0xFFFF - 8 - 20  # IPv4 total length is a u16


class RecordFormat(enum.Enum):
    """The two file formats: ``ADHOC`` (default) and ``PCAP`` (``-P``)."""

    ADHOC = "adhoc"
    PCAP = "pcap"


# -- safe names -------------------------------------------------------------------------

_KEPT = frozenset(range(0x21, 0x7F)) - {ord("%"), ord("/")}


def safe_component(raw: bytes, *, tag: bool = False) -> str:
    """Map call-id, tag or name bytes to a string that is one harmless path component.

    Reversible (:func:`unsafe_component`) and injective; see the module docstring for the
    bytes it encodes. ``tag=True`` also encodes ``=``, the call-id/tag separator.
    """
    out: list[str] = []
    for i, byte in enumerate(raw):
        if byte in _KEPT and not (i == 0 and byte == 0x2E) and not (tag and byte == 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def unsafe_component(text: str) -> bytes:
    """The bytes :func:`safe_component` was given (raises ``ValueError`` on bad input)."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            digits = text[i + 1 : i + 3]
            if len(digits) != 2 or not all(c in "0123456789ABCDEF" for c in digits):
                raise ValueError(f"bad escape at {i} in {text!r}")
            out.append(int(digits, 16))
            i += 3
        else:
            out.append(ord(text[i]))
            i += 1
    return bytes(out)


def _session_base(call_id: bytes, tag: bytes) -> str:
    # The creating tag without its ";N" media-stream suffix, as the reference names files.
    return f"{safe_component(call_id)}={safe_component(tag.split(b';', 1)[0], tag=True)}"


def leg_file_names(call_id: bytes, tag: bytes, side: Direction) -> tuple[str, str]:
    """Per-leg files ``(<cid>=<tag>.<o|a>.rtp, <cid>=<tag>.<o|a>.rtcp)``; ``tag`` is the
    session's creating tag (cut at its first ``;``)."""
    base = f"{_session_base(call_id, tag)}.{side.value}"
    return f"{base}.rtp", f"{base}.rtcp"


def single_file_name(call_id: bytes, tag: bytes) -> str:
    """The single pcap file of a session (``-P`` with ``Rs`` or ``-a``): ``<cid>=<tag>.pcap``."""
    return f"{_session_base(call_id, tag)}.pcap"


def copy_file_names(name: bytes) -> tuple[str, str]:
    """``C`` with a file name: ``(<name>.rtp, <name>.rtcp)``."""
    base = _copy_base(name)
    return f"{base}.rtp", f"{base}.rtcp"


def copy_single_file_name(name: bytes) -> str:
    """``Cs`` with ``-P``: ``<name>`` exactly (made safe)."""
    return _copy_base(name)


def _copy_base(name: bytes) -> str:
    if not name:
        raise ValueError("empty recording name")
    return safe_component(name)


# -- encoding ---------------------------------------------------------------------------


class IpIdCounter:
    """IPv4 identification numbers for fake headers: one sequence from 0, wrapping at 2^16."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> int:
        """The next identification number."""
        value = self._next
        self._next = (value + 1) & 0xFFFF
        return value


PROCESS_IP_IDS = IpIdCounter()
"""The process-wide counter every pcap file shares, as in the reference."""


@lru_cache(maxsize=4096)
def _address_bytes(host: str) -> bytes:
    host = host.partition("%")[0]  # an IPv6 scope (fe80::1%eth0) is not part of the address
    if ":" in host:
        return socket.inet_pton(socket.AF_INET6, host)
    return socket.inet_pton(socket.AF_INET, host)


def _v6(raw: bytes) -> bytes:
    return raw if len(raw) == 16 else b"\0" * 10 + b"\xff\xff" + raw


def _clock(when: float) -> tuple[int, int]:
    seconds = int(when)
    micros = round((when - seconds) * 1_000_000)  # to the nearest: the double's own error
    if micros >= 1_000_000:
        return seconds + 1, 0
    return seconds, micros


def _ones_sum(data: bytes) -> int:
    # RFC 1071: the ones' complement sum does not depend on byte order, so summing native
    # 16-bit words and swapping the folded result gives the network-order sum, fast.
    if len(data) & 1:
        data += b"\0"
    total = sum(memoryview(data).cast("H"))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return total


def internet_checksum(data: bytes) -> int:
    """The RFC 1071 checksum of ``data`` (ones' complement of the ones' complement sum)."""
    return ~_ones_sum(data) & 0xFFFF


def mac_for(address: bytes) -> bytes:
    """The fake MAC address the reference derives from an IPv4 or IPv6 address."""
    if len(address) == 4:
        return b"\0\0" + address
    mac = bytearray(address[:6])
    for i in range(6, 16):
        mac[i % 6] ^= address[i]
    return bytes(mac)


def adhoc_record(packet: bytes, source: Address, when: float) -> bytes:
    """One ad-hoc record: the 30-byte header describing the sender, then ``packet``."""
    packet = packet[:MAX_ADHOC_PAYLOAD]
    raw = _address_bytes(source[0])
    family = FAMILY_INET if len(raw) == 4 else FAMILY_INET6
    header = ADHOC_HEADER.pack(family, source[1].to_bytes(2, "big"), raw, when, len(packet))
    return header + packet


def pcap_file_header() -> bytes:
    """The 24-byte pcap global header (host order, microseconds, Ethernet)."""
    return PCAP_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, PCAP_SNAPLEN, LINKTYPE_ETHERNET)


def pcap_record(
    packet: bytes, source: Address, destination: Address, when: float, ids: IpIdCounter
) -> bytes:
    """One pcap record: header, fake Ethernet, IPv4 (id from ``ids``) or IPv6, UDP, packet.

    Both addresses IPv4 give an IPv4 packet; otherwise an IPv6 one, with an IPv4 address
    written IPv4-mapped (a relay leg never mixes families, so this is only a fallback).
    """
    packet = packet[:MAX_UDP_PAYLOAD]
    src, dst = _address_bytes(source[0]), _address_bytes(destination[0])
    udp_length = 8 + len(packet)
    ports = struct.pack("!HHH", source[1], destination[1], udp_length)
    if len(src) == 4 and len(dst) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, udp_length)
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45, 0, 20 + udp_length, ids.take(), 0, IPV4_TTL, IPPROTO_UDP, 0, src, dst,
        )  # fmt: skip
        ip = ip[:10] + internet_checksum(ip).to_bytes(2, "big") + ip[12:]
        ethertype = ETHERTYPE_IPV4
    else:
        src, dst = _v6(src), _v6(dst)
        pseudo = src + dst + struct.pack("!I3xB", udp_length, IPPROTO_UDP)
        ip = struct.pack("!IHBB", 6 << 28, udp_length, IPPROTO_UDP, IPV6_HOP_LIMIT) + src + dst
        ethertype = ETHERTYPE_IPV6
    # A computed 0 is sent as 0xffff: 0 means "no checksum" (and is forbidden over IPv6).
    checksum = internet_checksum(pseudo + ports + b"\0\0" + packet) or 0xFFFF
    frame = (
        mac_for(dst) + mac_for(src) + ethertype.to_bytes(2, "big") + ip
        + ports + checksum.to_bytes(2, "big") + packet
    )  # fmt: skip
    seconds, micros = _clock(when)
    return PCAP_RECORD.pack(seconds, micros, len(frame), len(frame)) + frame


# -- one open file ----------------------------------------------------------------------


class Sink(Protocol):
    """What a recording writes to: an unbuffered binary file (``open(p, 'wb', 0)``)."""

    def write(self, data: bytes | memoryview, /) -> int | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RecordDirs:
    """Where recordings go: ``-r DIR`` and, with ``-S DIR``, the spool they are written in."""

    record_dir: Path
    spool_dir: Path | None = None


ErrorCallback = Callable[["Recording", OSError], None]


class Recording:
    """One open recording file: buffered writes that never raise, close moves it out of
    the spool.

    A failed write (ENOSPC, EROFS, EIO...) marks the recording failed (:attr:`failed`,
    :attr:`error`), drops what is buffered and every later packet, and calls ``on_error``
    once, so the relay can count it and log one line; nothing is raised into the caller.
    """

    __slots__ = (
        "_buffer",
        "_buffer_size",
        "_error",
        "_final_path",
        "_ids",
        "_move_error",
        "_on_error",
        "_path",
        "_sink",
        "format",
    )

    def __init__(
        self,
        sink: Sink,
        fmt: RecordFormat,
        path: Path,
        *,
        final_path: Path | None = None,
        on_error: ErrorCallback | None = None,
        ids: IpIdCounter = PROCESS_IP_IDS,
        buffer_size: int = BUFFER_SIZE,
        header: bool = True,
    ) -> None:
        """Wrap an open ``sink`` at ``path``; :meth:`close` renames it to ``final_path``
        if given. Most callers want :meth:`open`. A pcap file's header is written here."""
        self.format = fmt
        self._sink: Sink | None = sink
        self._path = path
        self._final_path = final_path
        self._on_error = on_error
        self._ids = ids
        self._buffer_size = buffer_size
        self._buffer = bytearray()
        self._error: OSError | None = None
        self._move_error: OSError | None = None
        if fmt is RecordFormat.PCAP and header:
            self._buffer += pcap_file_header()

    @classmethod
    def open(
        cls,
        dirs: RecordDirs,
        name: str,
        fmt: RecordFormat,
        *,
        on_error: ErrorCallback | None = None,
        append: bool = False,
    ) -> Recording:
        """Create (or truncate) ``name`` in the spool directory, else the record directory;
        with ``append``, continue it (a pcap file that has its header keeps it).

        ``name`` comes from :func:`leg_file_names` and friends. Raises ``OSError`` when the
        file cannot be created (the command then fails: ``E50`` for R, ``E65`` for C).
        """
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a file name: {name!r}")
        directory = dirs.spool_dir if dirs.spool_dir is not None else dirs.record_dir
        path = directory / name
        final = dirs.record_dir / name if dirs.spool_dir is not None else None
        sink = open(path, "ab" if append else "wb", buffering=0)  # noqa: SIM115 -- closed by close()
        header = sink.tell() == 0
        return cls(sink, fmt, path, final_path=final, on_error=on_error, header=header)

    @property
    def path(self) -> Path:
        """Where the file is now: the spool until closed, then the record directory
        (unless the move failed)."""
        return self._path

    @property
    def failed(self) -> bool:
        """True once a write (or the close) failed; nothing more is written."""
        return self._error is not None

    @property
    def error(self) -> OSError | None:
        """The error that stopped the recording, if any (``.errno`` says which)."""
        return self._error

    @property
    def errno(self) -> int | None:
        """The ``errno`` of :attr:`error`, if any."""
        return self._error.errno if self._error is not None else None

    @property
    def move_error(self) -> OSError | None:
        """Why the spool -> record rename failed, if it did (the file stays in the spool)."""
        return self._move_error

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._sink is None

    def write(self, packet: bytes, source: Address, destination: Address, when: float) -> None:
        """Record ``packet`` from ``source`` to ``destination`` that arrived at ``when``
        (seconds since the epoch). The ad-hoc format keeps only the source."""
        if self._sink is None or self._error is not None:
            return
        if self.format is RecordFormat.PCAP:
            self._buffer += pcap_record(packet, source, destination, when, self._ids)
        else:
            self._buffer += adhoc_record(packet, source, when)
        if len(self._buffer) >= self._buffer_size:
            self.flush()

    def flush(self) -> None:
        """Write out what is buffered (the relay calls this on a schedule)."""
        if self._sink is None or self._error is not None or not self._buffer:
            return
        view = memoryview(self._buffer)
        try:
            while view:
                written = self._sink.write(view)
                if not written:  # a regular file never takes nothing; do not spin
                    raise OSError(errno_codes.EIO, os.strerror(errno_codes.EIO))
                view = view[written:]
        except OSError as exc:
            view.release()
            self._fail(exc)
            return
        view.release()
        self._buffer.clear()

    def close(self) -> None:
        """Flush, close and (with a spool) move the file into the record directory.

        Never raises: a failed close counts as a write failure, a failed rename is logged
        once and leaves the file in the spool. Closing twice does nothing.
        """
        sink = self._sink
        if sink is None:
            return
        self.flush()
        self._sink = None
        self._buffer = bytearray()
        try:
            sink.close()
        except OSError as exc:
            self._fail(exc)
        if self._final_path is None:
            return
        try:
            os.replace(self._path, self._final_path)
        except OSError as exc:
            self._move_error = exc
            log.warning(
                "recording %s stays in the spool: cannot move it to %s: %s",
                self._path,
                self._final_path.parent,
                exc.strerror or exc,
            )
            return
        self._path = self._final_path

    def _fail(self, exc: OSError) -> None:
        if self._error is not None:
            return
        self._error = exc
        self._buffer.clear()
        if self._on_error is not None:
            self._on_error(self, exc)


# -- reading ----------------------------------------------------------------------------


class RecordFormatError(ValueError):
    """The bytes are not a recording this module can read."""


@dataclass(frozen=True, slots=True)
class Record:
    """One recorded packet. Ad-hoc files do not store the destination (``None``)."""

    source: Endpoint
    destination: Endpoint | None
    time: float
    payload: bytes


def detect_format(data: bytes) -> RecordFormat:
    """PCAP when ``data`` starts with a pcap magic number (either byte order), else ADHOC."""
    if data[:4] in _PCAP_MAGICS:
        return RecordFormat.PCAP
    return RecordFormat.ADHOC


def read_records(data: bytes) -> Iterator[Record]:
    """The records of a file's contents in either format (detected by the magic)."""
    if detect_format(data) is RecordFormat.PCAP:
        return read_pcap(data)
    return read_adhoc(data)


def read_file(path: str | os.PathLike[str]) -> list[Record]:
    """Every record of the file at ``path``."""
    return list(read_records(Path(path).read_bytes()))


def read_adhoc(data: bytes) -> Iterator[Record]:
    """Records of an ad-hoc file (written on a host of this byte order). A record cut
    short at the end (a spool file still being written) is left out."""
    offset = 0
    size = ADHOC_HEADER.size
    while offset + size <= len(data):
        family, port, raw, when, length = ADHOC_HEADER.unpack_from(data, offset)
        if family == FAMILY_INET:
            host = socket.inet_ntop(socket.AF_INET, raw[:4])
        elif family == FAMILY_INET6:
            host = socket.inet_ntop(socket.AF_INET6, raw)
        else:
            raise RecordFormatError(f"offset {offset}: address family {family} is not 2 or 10")
        end = offset + size + length
        if end > len(data):
            return
        source = Endpoint(host, int.from_bytes(port, "big"))
        yield Record(source, None, when, data[offset + size : end])
        offset = end


_PCAP_MAGICS = {
    struct.pack("<I", PCAP_MAGIC): ("<", 1e-6),
    struct.pack(">I", PCAP_MAGIC): (">", 1e-6),
    struct.pack("<I", 0xA1B23C4D): ("<", 1e-9),
    struct.pack(">I", 0xA1B23C4D): (">", 1e-9),
}


def read_pcap(data: bytes) -> Iterator[Record]:
    """UDP packets of a classic pcap file with Ethernet link type (any byte order,
    micro- or nanosecond); other frames are skipped, a truncated last record left out."""
    try:
        order, unit = _PCAP_MAGICS[data[:4]]
    except KeyError:
        raise RecordFormatError("not a pcap file") from None
    if len(data) < 24:
        raise RecordFormatError("pcap header cut short")
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise RecordFormatError(f"pcap link type {linktype} is not Ethernet (1)")
    header = struct.Struct(order + "IIII")
    offset = 24
    while offset + header.size <= len(data):
        seconds, fraction, incl_len, _orig = header.unpack_from(data, offset)
        start = offset + header.size
        offset = start + incl_len
        if offset > len(data):
            return
        parsed = _parse_frame(data[start:offset])
        if parsed is not None:
            source, destination, payload = parsed
            yield Record(source, destination, seconds + fraction * unit, payload)


def _parse_frame(frame: bytes) -> tuple[Endpoint, Endpoint, bytes] | None:
    if len(frame) < 14:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETHERTYPE_IPV4 and len(frame) >= 34 and frame[14] >> 4 == 4:
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != IPPROTO_UDP:
            return None
        family, src, dst = socket.AF_INET, frame[26:30], frame[30:34]
        udp = 14 + ihl
    elif ethertype == ETHERTYPE_IPV6 and len(frame) >= 54 and frame[20] == IPPROTO_UDP:
        family, src, dst = socket.AF_INET6, frame[22:38], frame[38:54]
        udp = 54
    else:
        return None
    if len(frame) < udp + 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", frame, udp)
    payload = frame[udp + 8 : udp + max(length, 8)]
    return (
        Endpoint(socket.inet_ntop(family, src), sport),
        Endpoint(socket.inet_ntop(family, dst), dport),
        payload,
    )
