"""``pyrtpproxy extract``: a recording (ad-hoc or pcap) -> a 16-bit 8 kHz WAV file.

Inputs: one file holding one direction (``c1=ft.o.rtp``), two files (``.o.rtp`` and
``.a.rtp``), or one pcap holding both directions (``c1=ft.pcap``). Each input file's RTP is
split into directions by the relay port that received it (pcap; an ad-hoc file is one
direction), and each direction into streams by SSRC. RTCP (and RTP payload types 64-95,
which collide with RTCP, RFC 5761) is skipped. Streams are ordered by sequence number
(wrap included) and laid out by RTP timestamp, so lost packets become silence of the
right length; each stream starts at the arrival time of its first packet, which aligns
the directions. Only PCMU (0) and PCMA (8) are decoded; comfort noise (13) is silence and
dynamic payload types next to G.711 (telephone-event, in practice) are skipped.
"""

from __future__ import annotations

import sys
import wave
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..engine.addresses import Endpoint
from ..media.record import Record, RecordFormatError, read_records
from .g711 import ALAW_DECODE, ULAW_DECODE, decode

RATE = 8000
MAX_SECONDS = 24 * 3600  # a longer output means broken timestamps, not a long call

PT_PCMU = 0
PT_PCMA = 8
PT_CN = 13
_TABLES = {PT_PCMU: ULAW_DECODE, PT_PCMA: ALAW_DECODE}
PT_NAMES = {
    0: "PCMU", 3: "GSM", 4: "G723", 5: "DVI4", 6: "DVI4", 7: "LPC", 8: "PCMA", 9: "G722",
    10: "L16", 11: "L16", 12: "QCELP", 13: "CN", 14: "MPA", 15: "G728", 16: "DVI4",
    17: "DVI4", 18: "G729", 25: "CelB", 26: "JPEG", 28: "nv", 31: "H261", 32: "MPV",
    33: "MP2T", 34: "H263",
}  # fmt: skip


class ExtractError(Exception):
    """A recording that cannot be turned into audio; the message says why."""


def payload_type_name(pt: int) -> str:
    """The static name of ``pt`` (RFC 3551), or ``dynamic``/``unassigned``."""
    if pt >= 96:
        return "dynamic"
    return PT_NAMES.get(pt, "unassigned")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """The parts of an RTP packet extraction needs."""

    pt: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes
    arrival: float


def parse_rtp(data: bytes, arrival: float) -> RtpPacket | None:
    """An RTP packet, or None for RTCP, non-RTP and malformed packets."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    pt = data[1] & 0x7F
    if 64 <= pt <= 95:  # RTCP types 192-223 with the marker bit read as RTP (RFC 5761)
        return None
    start = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:  # header extension
        if len(data) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = len(data)
    if data[0] & 0x20:  # padding: the last byte says how much
        end -= data[-1]
    if start > end:
        return None
    return RtpPacket(
        pt,
        int.from_bytes(data[2:4], "big"),
        int.from_bytes(data[4:8], "big"),
        int.from_bytes(data[8:12], "big"),
        data[start:end],
        arrival,
    )


@dataclass
class Stream:
    """One SSRC's packets in one direction, in arrival order."""

    packets: list[RtpPacket] = field(default_factory=list)

    @property
    def first_arrival(self) -> float:
        return self.packets[0].arrival

    def samples(self) -> tuple[array[int], int]:
        """Decoded audio (ordered by sequence number, placed by RTP timestamp, gaps
        silent) and how many of its samples precede the first packet that arrived."""
        ordered = _in_sequence(self.packets)
        first = ordered[0].timestamp
        # Signed 32-bit distance from the first packet's timestamp (wrap included).
        offsets = [((p.timestamp - first + 2**31) % 2**32) - 2**31 for p in ordered]
        base = min(offsets)
        chunks = []
        end = 0
        for packet, offset in zip(ordered, offsets, strict=True):
            if packet.pt == PT_CN:
                continue
            chunk = decode(packet.payload, _TABLES[packet.pt])
            chunks.append((offset - base, chunk))
            end = max(end, offset - base + len(chunk))
        if end > MAX_SECONDS * RATE:
            raise ExtractError(f"RTP timestamps of SSRC {ordered[0].ssrc:#010x} span over 24 h")
        out = array("h", bytes(2 * end))
        for position, chunk in chunks:
            out[position : position + len(chunk)] = chunk
        lead = ((self.packets[0].timestamp - first + 2**31) % 2**32) - 2**31 - base
        return out, lead


def _in_sequence(packets: Sequence[RtpPacket]) -> list[RtpPacket]:
    # Extend the 16-bit sequence numbers in arrival order (wrap, reordering), then sort;
    # a duplicate keeps the first copy.
    extended: dict[int, RtpPacket] = {}
    last_seq = packets[0].seq
    ext = last_seq
    for packet in packets:
        ext += ((packet.seq - last_seq + 0x8000) & 0xFFFF) - 0x8000
        last_seq = packet.seq
        extended.setdefault(ext, packet)
    return [extended[k] for k in sorted(extended)]


@dataclass
class Direction:
    """The RTP one party sent: its streams (one per SSRC, in order of appearance)."""

    label: str
    streams: dict[int, Stream] = field(default_factory=dict)


def directions(inputs: Sequence[tuple[str, Iterable[Record]]]) -> list[Direction]:
    """Group the records of each input file into directions and SSRC streams.

    Raises :class:`ExtractError` for payload types other than PCMU/PCMA (see the module
    docstring for what is skipped) and for a recording without RTP.
    """
    found: list[Direction] = []
    dynamic: dict[int, int] = {}
    for name, records in inputs:
        by_port: dict[Endpoint | None, Direction] = {}
        for record in records:
            packet = parse_rtp(record.payload, record.time)
            if packet is None:
                continue
            if packet.pt not in _TABLES and packet.pt != PT_CN:
                if packet.pt >= 96:
                    dynamic[packet.pt] = dynamic.get(packet.pt, 0) + 1
                    continue
                raise _unsupported(packet.pt)
            key = record.destination
            if key not in by_port:
                label = name if key is None else f"{name} (to {key.host} port {key.port})"
                by_port[key] = Direction(label)
            by_port[key].streams.setdefault(packet.ssrc, Stream()).packets.append(packet)
        found.extend(by_port.values())
    if not found:
        if dynamic:
            raise _unsupported(min(dynamic))
        raise ExtractError("no RTP packets in " + " and ".join(name for name, _ in inputs))
    for pt, count in sorted(dynamic.items()):
        click.echo(
            f"pyrtpproxy extract: skipped {count} packets of dynamic payload type {pt} "
            "(telephone-event?)",
            err=True,
        )
    return found


def _unsupported(pt: int) -> ExtractError:
    return ExtractError(
        f"payload type {pt} ({payload_type_name(pt)}) is not supported; only PCMU (0) and PCMA (8)"
    )


def tracks(found: Sequence[Direction]) -> list[array[int]]:
    """One track per direction, all starting at the first packet's arrival (streams are
    placed by their own first arrival) and of equal length."""
    start = min(s.first_arrival for d in found for s in d.streams.values())
    result: list[array[int]] = []
    for direction in found:
        track = array("h")
        for stream in direction.streams.values():
            samples, lead = stream.samples()
            at = round((stream.first_arrival - start) * RATE) - lead
            if at < 0:  # reordered ahead of the first packet of the call: cut
                samples, at = samples[-at:], 0
            if len(track) < at + len(samples):
                track.extend(array("h", bytes(2 * (at + len(samples) - len(track)))))
            track[at : at + len(samples)] = samples
        result.append(track)
    length = max(len(t) for t in result)
    for track in result:
        track.extend(array("h", bytes(2 * (length - len(track)))))
    return result


def mix(tracks_: Sequence[array[int]]) -> array[int]:
    """Sum equal-length tracks, clipped to 16 bits."""
    if len(tracks_) == 1:
        return tracks_[0]
    return array("h", (max(-32768, min(32767, sum(s))) for s in zip(*tracks_, strict=True)))


def interleave(left: array[int], right: array[int]) -> array[int]:
    """Stereo frames from two equal-length tracks."""
    out = array("h", bytes(4 * len(left)))
    out[0::2] = left
    out[1::2] = right
    return out


def write_wav(path: str | Path, samples: array[int], channels: int) -> None:
    """A 16-bit 8 kHz WAV file of interleaved ``samples``."""
    if sys.byteorder == "big":  # WAV is little-endian
        samples = array("h", samples)
        samples.byteswap()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())


def extract(paths: Sequence[str | Path], output: str | Path, *, stereo: bool = False) -> int:
    """Turn the recordings at ``paths`` into the WAV file ``output``; returns the number of
    frames written. Raises :class:`ExtractError` (or ``OSError``)."""
    inputs: list[tuple[str, Iterable[Record]]] = []
    for path in paths:
        try:
            inputs.append((str(path), list(read_records(Path(path).read_bytes()))))
        except RecordFormatError as exc:
            raise ExtractError(f"{path}: {exc}") from None
    found = directions(inputs)
    if len(found) > 2:
        raise ExtractError(
            f"found {len(found)} directions ({', '.join(d.label for d in found)}); a call has two"
        )
    audio = tracks(found)
    if stereo:
        right = audio[1] if len(audio) == 2 else array("h", bytes(2 * len(audio[0])))
        write_wav(output, interleave(audio[0], right), 2)
    else:
        write_wav(output, mix(audio), 1)
    return len(audio[0])


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  pyrtpproxy extract /var/spool/rtpproxy/c1=ft.o.rtp c1=ft.a.rtp -o call.wav
  pyrtpproxy extract c1=ft.pcap -o call.wav --stereo
See pyrtpproxy(8).""",
)
@click.argument("recordings", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, metavar="FILE.wav", help="The WAV file to write.")
@click.option(
    "--stereo", is_flag=True, help="One channel per direction (default: both mixed into one)."
)
def extract_command(recordings: tuple[str, ...], output: str, stereo: bool) -> None:
    """Decode RECORDING [RECORDING2] (ad-hoc or pcap, PCMU/PCMA) into a 16-bit 8 kHz WAV.

    One file per direction (c1=ft.o.rtp, c1=ft.a.rtp) or one pcap holding both.
    """
    if len(recordings) > 2:
        raise click.UsageError("at most two recordings (one per direction)")
    try:
        extract(recordings, output, stereo=stereo)
    except (ExtractError, OSError) as exc:
        click.echo(f"pyrtpproxy extract: {exc}", err=True)
        sys.exit(1)


def main(argv: list[str]) -> None:
    """``pyrtpproxy extract ...`` (dispatched from :func:`pyrtpproxy.cli.main`)."""
    extract_command.main(args=argv, prog_name="pyrtpproxy extract")
