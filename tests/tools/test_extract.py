"""``pyrtpproxy extract``: G.711 tables, ordering, loss, alignment, mixing and the command
line, on recordings made with media/record.py's writers."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import wave
from array import array
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from pyrtpproxy.media.record import RecordDirs, RecordFormat, Recording
from pyrtpproxy.tools.extract import ExtractError, extract, extract_command, parse_rtp
from pyrtpproxy.tools.g711 import ALAW_DECODE, ULAW_DECODE, alaw_encode, encode, ulaw_encode

FRAME = 160
T0 = 1796149245.25
CALLER = ("192.0.2.10", 40000)
CALLEE = ("198.51.100.20", 50000)
LEG_B = ("203.0.113.1", 35000)  # the relay port that receives the caller's media
LEG_A = ("203.0.113.1", 35002)


def tone(freq: float, frames: int, amplitude: int = 8000) -> list[int]:
    return [
        round(amplitude * math.sin(2 * math.pi * freq * i / 8000)) for i in range(frames * FRAME)
    ]


def rtp(
    seq: int, ts: int, payload: bytes, pt: int = 0, ssrc: int = 0x1234, marker: int = 0
) -> bytes:
    return (
        struct.pack("!BBHII", 0x80, (marker << 7) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
        + payload
    )


def packets(
    samples: list[int],
    pt: int = 0,
    seq0: int = 1000,
    ts0: int = 5000,
    ssrc: int = 0x1234,
    start: float = T0,
) -> list[tuple[bytes, float]]:
    law = "ulaw" if pt == 0 else "alaw"
    out = []
    for i in range(len(samples) // FRAME):
        payload = encode(samples[i * FRAME : (i + 1) * FRAME], law)
        out.append((rtp(seq0 + i, ts0 + i * FRAME, payload, pt, ssrc), start + i * 0.02))
    return out


def record(
    path: Path,
    items: list[tuple[bytes, float]],
    src: tuple[str, int] = CALLER,
    dst: tuple[str, int] = LEG_B,
    fmt: RecordFormat = RecordFormat.ADHOC,
) -> Path:
    recording = Recording.open(RecordDirs(path.parent), path.name, fmt)
    for data, when in items:
        recording.write(data, src, dst, when)
    recording.close()
    return path


def read_wav(path: Path) -> tuple[int, array[int]]:
    with wave.open(str(path), "rb") as wav:
        assert wav.getframerate() == 8000 and wav.getsampwidth() == 2
        samples = array("h", wav.readframes(wav.getnframes()))
        return wav.getnchannels(), samples


def close_to(got: int, want: int) -> bool:
    """Within G.711 quantisation (steps are about 1/16 of the value, at least 2)."""
    return abs(got - want) <= abs(want) / 16 + 16


# -- G.711 ------------------------------------------------------------------------------


def test_g711_known_values() -> None:
    assert (ULAW_DECODE[0x00], ULAW_DECODE[0x80], ULAW_DECODE[0xFF], ULAW_DECODE[0x7F]) == (
        -32124, 32124, 0, 0,
    )  # fmt: skip
    assert (ALAW_DECODE[0xD5], ALAW_DECODE[0x55], ALAW_DECODE[0xAA], ALAW_DECODE[0x2A]) == (
        8, -8, 32256, -32256,
    )  # fmt: skip
    assert ulaw_encode(0) == 0xFF and alaw_encode(0) == 0xD5
    assert ulaw_encode(32767) == 0x80 and ulaw_encode(-32768) == 0x00
    assert alaw_encode(32767) == 0xAA and alaw_encode(-32768) == 0x2A
    assert all(ulaw_encode(ULAW_DECODE[c]) == c for c in range(256) if c != 0x7F)  # -0 is 0
    assert all(alaw_encode(ALAW_DECODE[c]) == c for c in range(256))
    assert sorted(ULAW_DECODE[c] for c in range(0x80, 0x100)) == [
        ULAW_DECODE[c] for c in range(0xFF, 0x7F, -1)
    ]


@given(st.integers(-32000, 32000))
def test_g711_quantisation(sample: int) -> None:
    assert close_to(ULAW_DECODE[ulaw_encode(sample)], sample)
    assert close_to(ALAW_DECODE[alaw_encode(sample)], sample)


# -- RTP --------------------------------------------------------------------------------


def test_rtp_parsing_skips_rtcp_and_strips_headers() -> None:
    assert parse_rtp(bytes([0x81, 200, 0, 6]) + bytes(24), 0.0) is None  # SR
    assert parse_rtp(bytes([0x81, 201, 0, 1]) + bytes(20), 0.0) is None  # RR
    assert parse_rtp(b"\x00" * 20, 0.0) is None  # version 0
    assert parse_rtp(b"\x80\x00\x00", 0.0) is None
    csrc_ext_pad = (
        bytes([0xB1, 0x08]) + struct.pack("!HII", 7, 160, 9) + bytes(4)  # CC=1, X, P
        + struct.pack("!HH", 0xBEDE, 1) + bytes(4) + b"abc" + b"\0\0\x03"
    )  # fmt: skip
    packet = parse_rtp(csrc_ext_pad, 2.0)
    assert packet is not None
    assert (packet.pt, packet.seq, packet.timestamp, packet.ssrc) == (8, 7, 160, 9)
    assert packet.payload == b"abc"


# -- extraction -------------------------------------------------------------------------


def test_a_tone_with_one_lost_packet(tmp_path: Path) -> None:
    samples = tone(1000, 50)
    items = packets(samples)
    del items[20]  # lost
    src = record(tmp_path / "c1=ft.o.rtp", items)
    assert extract([src], tmp_path / "out.wav") == 50 * FRAME
    channels, got = read_wav(tmp_path / "out.wav")
    assert channels == 1 and len(got) == 50 * FRAME
    lost = range(20 * FRAME, 21 * FRAME)
    assert all(got[i] == 0 for i in lost)  # silence of exactly one packet
    assert all(close_to(got[i], samples[i]) for i in range(len(samples)) if i not in lost)
    assert got[21 * FRAME + 2] != 0


def test_reordering_sequence_and_timestamp_wrap_and_duplicates(tmp_path: Path) -> None:
    samples = tone(1000, 20)
    items = packets(samples, seq0=65530, ts0=2**32 - 5 * FRAME)
    shuffled = [
        items[0],
        items[2],
        items[1],
        *items[3:10],
        items[11],
        items[10],
        items[5],
        *items[12:],
    ]
    src = record(tmp_path / "wrap.rtp", shuffled)
    extract([src], tmp_path / "out.wav")
    _, got = read_wav(tmp_path / "out.wav")
    assert len(got) == len(samples)
    assert all(close_to(g, s) for g, s in zip(got, samples, strict=True))


def test_rtcp_is_skipped(tmp_path: Path) -> None:
    items = packets(tone(1000, 10))
    items.insert(3, (bytes([0x81, 200, 0, 6]) + bytes(24), T0 + 0.05))
    extract([record(tmp_path / "x.rtp", items)], tmp_path / "out.wav")
    assert len(read_wav(tmp_path / "out.wav")[1]) == 10 * FRAME


def two_directions() -> tuple[
    list[int], list[int], list[tuple[bytes, float]], list[tuple[bytes, float]]
]:
    caller = tone(1000, 50)
    callee = tone(500, 25, amplitude=30000)
    # The callee starts answering half a second later, in PCMA.
    return caller, callee, packets(caller), packets(callee, pt=8, ssrc=0x99, start=T0 + 0.5)


def test_two_files_stereo_and_mixed(tmp_path: Path) -> None:
    caller, callee, out_items, in_items = two_directions()
    o = record(tmp_path / "c1=ft.o.rtp", out_items)
    a = record(tmp_path / "c1=ft.a.rtp", in_items, CALLEE, LEG_A)
    extract([o, a], tmp_path / "stereo.wav", stereo=True)
    channels, frames = read_wav(tmp_path / "stereo.wav")
    assert channels == 2 and len(frames) == 2 * 50 * FRAME
    left, right = frames[0::2], frames[1::2]
    assert all(close_to(g, s) for g, s in zip(left, caller, strict=True))
    assert all(s == 0 for s in right[: 25 * FRAME])  # aligned by first arrival
    assert all(close_to(g, s) for g, s in zip(right[25 * FRAME :], callee, strict=True))

    extract([o, a], tmp_path / "mixed.wav")
    channels, mixed = read_wav(tmp_path / "mixed.wav")
    assert channels == 1 and len(mixed) == 50 * FRAME
    assert list(mixed) == [max(-32768, min(32767, a + b)) for a, b in zip(left, right, strict=True)]
    assert max(mixed) == 32767  # 8000 + 30000 clips


def test_one_pcap_with_both_directions(tmp_path: Path) -> None:
    caller, callee, out_items, in_items = two_directions()
    recording = Recording.open(RecordDirs(tmp_path), "c1=ft.pcap", RecordFormat.PCAP)
    merged = sorted(
        [(w, d, CALLER, LEG_B) for d, w in out_items] + [(w, d, CALLEE, LEG_A) for d, w in in_items]
    )
    for when, data, src, dst in merged:
        recording.write(data, src, dst, when)
    recording.close()
    result = CliRunner().invoke(
        extract_command, [str(recording.path), "-o", str(tmp_path / "s.wav"), "--stereo"]
    )
    assert result.exit_code == 0, result.output
    channels, frames = read_wav(tmp_path / "s.wav")
    assert channels == 2
    assert all(close_to(g, s) for g, s in zip(frames[0::2], caller, strict=True))
    assert all(close_to(g, s) for g, s in zip(frames[1::2][25 * FRAME :], callee, strict=True))


def test_an_ssrc_change_keeps_its_place(tmp_path: Path) -> None:
    first, second = tone(1000, 10), tone(1000, 10)
    items = packets(first) + packets(second, seq0=7, ts0=99, ssrc=0x5678, start=T0 + 0.4)
    extract([record(tmp_path / "x.rtp", items)], tmp_path / "out.wav")
    _, got = read_wav(tmp_path / "out.wav")
    assert len(got) == 30 * FRAME  # 0.2 s of silence between the two streams
    assert all(s == 0 for s in got[10 * FRAME : 20 * FRAME])


def test_telephone_events_and_comfort_noise_are_skipped(tmp_path: Path) -> None:
    items = packets(tone(1000, 10))
    items[4] = (rtp(1004, 5000 + 4 * FRAME, b"\x01\x0a\x00\xa0", pt=101), items[4][1])
    items[5] = (rtp(1005, 5000 + 5 * FRAME, b"\x40", pt=13), items[5][1])
    result = CliRunner().invoke(
        extract_command, [str(record(tmp_path / "x.rtp", items)), "-o", str(tmp_path / "o.wav")]
    )
    assert result.exit_code == 0, result.output
    assert "skipped 1 packets of dynamic payload type 101" in result.output
    _, got = read_wav(tmp_path / "o.wav")
    assert len(got) == 10 * FRAME and all(s == 0 for s in got[4 * FRAME : 6 * FRAME])


@pytest.mark.parametrize(
    ("pt", "message"),
    [
        (18, "payload type 18 (G729) is not supported; only PCMU (0) and PCMA (8)"),
        (9, "payload type 9 (G722) is not supported; only PCMU (0) and PCMA (8)"),
        (111, "payload type 111 (dynamic) is not supported; only PCMU (0) and PCMA (8)"),
    ],
)
def test_unsupported_payload_types_are_named(tmp_path: Path, pt: int, message: str) -> None:
    src = record(
        tmp_path / "x.rtp", [(rtp(i, i * 160, bytes(20), pt=pt), T0 + i) for i in range(3)]
    )
    with pytest.raises(ExtractError) as info:
        extract([src], tmp_path / "out.wav")
    assert str(info.value) == message
    result = CliRunner().invoke(extract_command, [str(src), "-o", str(tmp_path / "o.wav")])
    assert result.exit_code == 1
    assert result.output == f"pyrtpproxy extract: {message}\n"
    assert not (tmp_path / "o.wav").exists()


def test_empty_and_foreign_files_fail_clearly(tmp_path: Path) -> None:
    empty = record(tmp_path / "c1=ft.o.rtcp", [])
    result = CliRunner().invoke(extract_command, [str(empty), "-o", str(tmp_path / "o.wav")])
    assert result.exit_code == 1 and "no RTP packets in" in result.output
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x07" * 100)
    result = CliRunner().invoke(extract_command, [str(junk), "-o", str(tmp_path / "o.wav")])
    assert result.exit_code == 1 and "address family 1799 is not 2 or 10" in result.output


def test_the_real_command_line(tmp_path: Path) -> None:
    caller, _callee, out_items, in_items = two_directions()
    o = record(tmp_path / "c1=ft.o.rtp", out_items, fmt=RecordFormat.PCAP)
    a = record(tmp_path / "c1=ft.a.rtp", in_items, CALLEE, LEG_A)  # formats may differ
    command = [sys.executable, "-m", "pyrtpproxy", "extract"]
    result = subprocess.run(
        [*command, str(o), str(a), "-o", str(tmp_path / "call.wav"), "--stereo"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    channels, frames = read_wav(tmp_path / "call.wav")
    assert channels == 2 and len(frames) == 2 * len(caller)
    bad = record(tmp_path / "g729.rtp", [(rtp(1, 0, bytes(20), pt=18), T0)])
    result = subprocess.run(
        [*command, str(bad), "-o", str(tmp_path / "x.wav")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "pyrtpproxy extract: payload type 18 (G729) is not supported; only PCMU (0) and PCMA (8)\n"
    )
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--stereo" in result.stdout
