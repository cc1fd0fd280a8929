"""Recording files: the reference's ad-hoc and pcap bytes, safe names, buffering, spool
moves and write failures (spec media-features.md §1.4-§1.8)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.taps import Direction
from pyrtpproxy.media.record import (
    BUFFER_SIZE,
    PROCESS_IP_IDS,
    IpIdCounter,
    RecordDirs,
    RecordFormat,
    RecordFormatError,
    Recording,
    adhoc_record,
    copy_file_names,
    copy_single_file_name,
    detect_format,
    leg_file_names,
    mac_for,
    pcap_file_header,
    pcap_record,
    read_adhoc,
    read_file,
    read_pcap,
    safe_component,
    single_file_name,
    unsafe_component,
)

# The spec's verified bytes are host order on a little-endian host (x86-64, as CI is).
assert sys.byteorder == "little"

T_V4 = struct.unpack("<d", bytes.fromhex("76fd52ffc3c3da41"))[0]  # 1796149245.2967...
T_V6 = struct.unpack("<d", bytes.fromhex("edf3c808c4c3da41"))[0]


def rtp(seq: int, payload: bytes = bytes(160), ssrc: int = 0x1234, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 160, ssrc) + payload


# -- the reference's bytes --------------------------------------------------------------


def test_adhoc_headers_are_the_verified_ones() -> None:
    v4 = adhoc_record(bytes(172), ("127.0.0.1", 47000), T_V4)
    assert v4[:30] == bytes.fromhex(
        "0200 b798 7f000001 000000000000000000000000 76fd52ffc3c3da41 ac00".replace(" ", "")
    )
    v6 = adhoc_record(bytes(172), ("::1", 47400), T_V6)
    assert v6[:30] == bytes.fromhex(
        "0a00 b928 00000000000000000000000000000001 edf3c808c4c3da41 ac00".replace(" ", "")
    )
    assert v4[30:] == v6[30:] == bytes(172)


def test_pcap_global_header_is_the_verified_one() -> None:
    assert pcap_file_header() == bytes.fromhex(
        "d4c3b2a1 0200 0400 00000000 00000000 ffff0000 01000000".replace(" ", "")
    )


def test_pcap_ipv4_record_matches_hand_computed_bytes() -> None:
    packet = b"\x80\x00\x00\x01hello"  # N = 9
    record = pcap_record(packet, ("127.0.0.1", 47000), ("127.0.0.1", 42512), T_V4, IpIdCounter())
    # IPv4 header words 4500 0025 0000 0000 7f11 ---- 7f00 0001 7f00 0001 sum to 0x1c238;
    # folded 0xc239, complemented 0x3dc6.
    # UDP: pseudo-header 7f00 0001 7f00 0001 0011 0011, ports b798 a610, length 0011,
    # payload 8000 0001 6865 6c6c 6f00: sum 0x41faf, folded 0x1fb3, complemented 0xe04c.
    expected = bytes.fromhex(
        "fd0f0f6b"  # ts_sec 1796149245
        "10870400"  # ts_usec 296720
        "33000000 33000000"  # incl_len = orig_len = 42 + 9
        "00007f000001 00007f000001 0800"  # dst MAC, src MAC from the addresses, IPv4
        "45 00 0025 0000 0000 7f 11 3dc6 7f000001 7f000001"  # id 0, TTL 127, UDP
        "b798 a610 0011 e04c"  # 47000 -> 42512, length 17, checksum
        "8000000168656c6c6f".replace(" ", "")
    )
    assert record == expected


def test_pcap_ipv6_record_layout() -> None:
    packet = b"\x80\x00\x00\x01hello"
    record = pcap_record(packet, ("::1", 47400), ("2001:db8::7", 42512), T_V6, IpIdCounter())
    assert struct.unpack_from("<II", record, 8) == (62 + 9, 62 + 9)
    frame = record[16:]
    assert frame[:6] == mac_for(ipaddress.IPv6Address("2001:db8::7").packed)
    assert frame[6:12] == bytes.fromhex("000000010000")  # ::1, as the spec shows
    assert frame[12:14] == b"\x86\xdd"
    assert frame[14:22] == bytes.fromhex("60000000 0011 11 40".replace(" ", ""))
    assert frame[54:60] == bytes.fromhex("b928 a610 0011".replace(" ", ""))
    assert udp_checksum_ok(frame)


def test_macs_from_addresses() -> None:
    assert mac_for(bytes([127, 0, 0, 1])) == bytes.fromhex("00007f000001")
    assert mac_for(ipaddress.IPv6Address("::1").packed) == bytes.fromhex("000000010000")
    raw = bytes(range(1, 17))
    expected = bytearray(raw[:6])
    for i in range(6, 16):
        expected[i % 6] ^= raw[i]
    assert mac_for(raw) == bytes(expected)


def test_ipv4_ids_are_one_counter_across_files() -> None:
    ids = IpIdCounter()
    a = pcap_record(b"x", ("10.0.0.1", 1), ("10.0.0.2", 2), 0.0, ids)
    b = pcap_record(b"x", ("10.0.0.3", 1), ("10.0.0.4", 2), 0.0, ids)
    pcap_record(b"x", ("::1", 1), ("::2", 2), 0.0, ids)  # IPv6 takes no id
    c = pcap_record(b"x", ("10.0.0.3", 1), ("10.0.0.4", 2), 0.0, ids)
    assert [struct.unpack_from("!H", r, 16 + 18)[0] for r in (a, b, c)] == [0, 1, 2]
    wrap = IpIdCounter()
    for _ in range(0x10000):
        wrap.take()
    assert wrap.take() == 0
    assert Recording(FakeSink(), RecordFormat.PCAP, Path("x"))._ids is PROCESS_IP_IDS


# -- an independent checksum computation ------------------------------------------------


def ones_sum_words(data: bytes) -> int:
    """Plain RFC 1071 loop over big-endian words, unlike the module's native-order sum."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp_checksum_ok(frame: bytes) -> bool:
    """Sum the pseudo-header and the UDP datagram including its checksum: 0xffff if right."""
    if frame[12:14] == b"\x08\x00":
        src, dst, udp = frame[26:30], frame[30:34], frame[34:]
        assert ones_sum_words(frame[14:34]) == 0xFFFF, "IPv4 header checksum"
        pseudo = src + dst + bytes([0, 17]) + len(udp).to_bytes(2, "big")
    else:
        src, dst, udp = frame[22:38], frame[38:54], frame[54:]
        pseudo = src + dst + len(udp).to_bytes(4, "big") + bytes([0, 0, 0, 17])
    assert int.from_bytes(udp[4:6], "big") == len(udp)
    assert udp[6:8] != b"\0\0"
    return ones_sum_words(pseudo + udp) == 0xFFFF


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
times = st.floats(0, 4e9, allow_nan=False)
packets = st.binary(max_size=1500)


@given(packets, st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports)
def test_udp_and_ip_checksums_are_correct(
    packet: bytes, hosts: tuple[str, str], sport: int, dport: int
) -> None:
    record = pcap_record(packet, (hosts[0], sport), (hosts[1], dport), 1.5, IpIdCounter())
    assert udp_checksum_ok(record[16:])


# -- round trips ------------------------------------------------------------------------


def same_host(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


@given(
    st.lists(
        st.tuples(
            packets,
            st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
            ports,
            ports,
            times,
        ),
        max_size=8,
    )
)
def test_writers_and_readers_round_trip(
    items: list[tuple[bytes, tuple[str, str], int, int, float]],
) -> None:
    adhoc, pcap = FakeSink(), FakeSink()
    recordings = [
        Recording(adhoc, RecordFormat.ADHOC, Path("a")),
        Recording(pcap, RecordFormat.PCAP, Path("p"), ids=IpIdCounter()),
    ]
    for packet, (src, dst), sport, dport, when in items:
        for recording in recordings:
            recording.write(packet, (src, sport), (dst, dport), when)
    for recording in recordings:
        recording.close()
    assert detect_format(bytes(adhoc.data)) is RecordFormat.ADHOC
    assert detect_format(bytes(pcap.data)) is RecordFormat.PCAP
    from_adhoc = list(read_adhoc(bytes(adhoc.data)))
    from_pcap = list(read_pcap(bytes(pcap.data)))
    assert len(from_adhoc) == len(from_pcap) == len(items)
    for (packet, (src, dst), sport, dport, when), a, p in zip(
        items, from_adhoc, from_pcap, strict=True
    ):
        assert a.payload == p.payload == packet
        assert a.time == when
        assert abs(p.time - when) < 1e-6 * max(1.0, when / 1e9)
        assert same_host(a.source.host, src) and a.source.port == sport
        assert a.destination is None
        assert same_host(p.source.host, src) and p.source.port == sport
        assert p.destination is not None
        assert same_host(p.destination.host, dst) and p.destination.port == dport


def test_readers_leave_out_a_cut_last_record_and_refuse_garbage() -> None:
    one = adhoc_record(b"abc", ("127.0.0.1", 5), 1.0)
    assert [r.payload for r in read_adhoc(one + one[:-1])] == [b"abc"]
    with pytest.raises(RecordFormatError):
        list(read_adhoc(b"\x07\x00" + one[2:]))
    pcap = pcap_file_header() + pcap_record(
        b"abc", ("1.2.3.4", 1), ("1.2.3.5", 2), 1, IpIdCounter()
    )
    assert [r.payload for r in read_pcap(pcap + pcap[24:-1])] == [b"abc"]
    with pytest.raises(RecordFormatError):
        list(read_pcap(pcap[:20] + struct.pack("<I", 101) + pcap[24:]))


def test_mixed_families_fall_back_to_ipv4_mapped_ipv6() -> None:
    record = pcap_record(b"x", ("10.0.0.1", 1), ("::1", 2), 0.0, IpIdCounter())
    (parsed,) = read_pcap(pcap_file_header() + record)
    assert parsed.source.host == "::ffff:10.0.0.1"
    assert udp_checksum_ok(record[16:])


# -- names ------------------------------------------------------------------------------


def test_names_of_ordinary_call_ids_are_the_references() -> None:
    cid = b"a84b4c76e66710@pc33.atlanta.example.com-_.+=!~*'()"
    assert leg_file_names(cid, b"1928301774;1", Direction.ORIGINATOR) == (
        f"{cid.decode()}=1928301774.o.rtp",
        f"{cid.decode()}=1928301774.o.rtcp",
    )
    assert leg_file_names(b"c1", b"ft", Direction.ANSWERER) == ("c1=ft.a.rtp", "c1=ft.a.rtcp")
    assert single_file_name(b"p2", b"ft;2") == "p2=ft.pcap"
    assert copy_file_names(b"call-7") == ("call-7.rtp", "call-7.rtcp")
    assert copy_single_file_name(b"call-7.pcap") == "call-7.pcap"


def test_dangerous_bytes_are_encoded() -> None:
    assert copy_file_names(b"sub/dir") == ("sub%2Fdir.rtp", "sub%2Fdir.rtcp")
    assert copy_single_file_name(b"..") == "%2E."
    assert copy_single_file_name(b"../../etc/passwd") == "%2E.%2F..%2Fetc%2Fpasswd"
    assert safe_component(b"a\0b\nc d%e\xff") == "a%00b%0Ac%20d%25e%FF"
    assert leg_file_names(b"c=1", b"t=2", Direction.ORIGINATOR)[0] == "c=1=t%3D2.o.rtp"
    assert leg_file_names(b".c", b".t", Direction.ANSWERER)[0] == "%2Ec=%2Et.a.rtp"
    with pytest.raises(ValueError):
        copy_single_file_name(b"")


@given(st.binary(min_size=1))
def test_mapping_is_reversible(raw: bytes) -> None:
    assert unsafe_component(safe_component(raw)) == raw
    assert unsafe_component(safe_component(raw, tag=True)) == raw


@given(st.binary(min_size=1), st.binary(min_size=1), st.binary(min_size=1), st.binary())
def test_names_are_injective(cid1: bytes, cid2: bytes, tag1: bytes, tag2: bytes) -> None:
    tag1, tag2 = tag1.split(b";")[0], tag2.split(b";")[0]
    for side in Direction:
        same = leg_file_names(cid1, tag1, side) == leg_file_names(cid2, tag2, side)
        assert same == ((cid1, tag1) == (cid2, tag2))
    assert (single_file_name(cid1, tag1) == single_file_name(cid2, tag2)) == (
        (cid1, tag1) == (cid2, tag2)
    )
    assert (copy_single_file_name(cid1) == copy_single_file_name(cid2)) == (cid1 == cid2)


@settings(max_examples=300)
@given(st.binary(min_size=1), st.binary(), st.binary(min_size=1))
def test_no_name_leaves_the_directory(cid: bytes, tag: bytes, name: bytes) -> None:
    directory = Path("/srv/rec").resolve()
    names = [
        *leg_file_names(cid, tag, Direction.ORIGINATOR),
        *leg_file_names(cid, tag, Direction.ANSWERER),
        single_file_name(cid, tag),
        *copy_file_names(name),
        copy_single_file_name(name),
    ]
    for file_name in names:
        assert file_name.isascii() and file_name.isprintable()
        assert "/" not in file_name and not file_name.startswith(".")
        joined = (directory / file_name).resolve()
        assert joined.parent == directory


# -- one open file ----------------------------------------------------------------------


class FakeSink:
    """A file that keeps what it is given, or raises the configured error."""

    def __init__(self, fail_with: int | None = None, fail_close: int | None = None) -> None:
        self.data = bytearray()
        self.writes = 0
        self.fail_with = fail_with
        self.fail_close = fail_close
        self.closed = False

    def write(self, data: bytes | memoryview, /) -> int:
        self.writes += 1
        if self.fail_with is not None:
            raise OSError(self.fail_with, os.strerror(self.fail_with))
        self.data += data[:1000]  # short writes, like a pipe or a signal would give
        return min(len(data), 1000)

    def close(self) -> None:
        self.closed = True
        if self.fail_close is not None:
            raise OSError(self.fail_close, os.strerror(self.fail_close))


def test_writes_are_buffered_until_4k_or_flush() -> None:
    sink = FakeSink()
    recording = Recording(sink, RecordFormat.ADHOC, Path("x"))
    recording.write(rtp(1), ("127.0.0.1", 4000), ("127.0.0.1", 5000), 1.0)
    assert sink.writes == 0
    recording.flush()
    assert len(sink.data) == 30 + 172
    while len(sink.data) < BUFFER_SIZE:
        recording.write(rtp(2), ("127.0.0.1", 4000), ("127.0.0.1", 5000), 1.0)
    before = len(sink.data)
    assert before >= BUFFER_SIZE  # the buffer went out by itself, in several short writes
    recording.write(rtp(3), ("127.0.0.1", 4000), ("127.0.0.1", 5000), 1.0)
    recording.close()
    assert sink.closed and len(sink.data) == before + 202
    assert [r.payload[2:4] for r in read_adhoc(bytes(sink.data))][-1] == b"\x00\x03"
    recording.write(rtp(4), ("127.0.0.1", 4000), ("127.0.0.1", 5000), 1.0)  # after close
    recording.flush()
    recording.close()
    assert recording.closed and len(sink.data) == before + 202


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT])
def test_a_write_failure_stops_the_recording_without_raising(code: int) -> None:
    sink = FakeSink(fail_with=code)
    seen: list[tuple[Recording, int | None]] = []
    recording = Recording(
        sink, RecordFormat.PCAP, Path("x"), on_error=lambda r, e: seen.append((r, e.errno))
    )
    assert not recording.failed and recording.errno is None
    for seq in range(100):
        recording.write(rtp(seq), ("127.0.0.1", 4000), ("127.0.0.1", 5000), 1.0)
    recording.flush()
    recording.close()
    assert recording.failed and recording.errno == code
    assert recording.error is not None and recording.error.errno == code
    assert seen == [(recording, code)]  # once, however many packets followed
    assert sink.writes == 1 and sink.closed


def test_a_failing_close_is_a_failure_too() -> None:
    seen: list[int | None] = []
    sink = FakeSink(fail_close=errno.EIO)
    recording = Recording(
        sink, RecordFormat.ADHOC, Path("x"), on_error=lambda _r, e: seen.append(e.errno)
    )
    recording.write(b"x", ("127.0.0.1", 4000), ("127.0.0.1", 5000), 1.0)
    recording.close()
    assert recording.errno == errno.EIO and seen == [errno.EIO]
    assert bytes(sink.data) == adhoc_record(b"x", ("127.0.0.1", 4000), 1.0)


def test_open_in_the_record_dir(tmp_path: Path) -> None:
    rtp_name, rtcp_name = leg_file_names(b"c1", b"ft", Direction.ORIGINATOR)
    dirs = RecordDirs(tmp_path)
    recording = Recording.open(dirs, rtp_name, RecordFormat.ADHOC)
    rtcp = Recording.open(dirs, rtcp_name, RecordFormat.PCAP)
    recording.write(rtp(1), ("127.0.0.1", 4000), ("127.0.0.1", 5000), 2.5)
    recording.close()
    rtcp.close()
    assert recording.path == tmp_path / "c1=ft.o.rtp"
    assert [r.time for r in read_file(recording.path)] == [2.5]
    assert (tmp_path / "c1=ft.o.rtcp").read_bytes() == pcap_file_header()  # 24 bytes, no RTCP


def test_open_truncates_and_refuses_paths(tmp_path: Path) -> None:
    (tmp_path / "n.rtp").write_bytes(b"old contents")
    Recording.open(RecordDirs(tmp_path), "n.rtp", RecordFormat.ADHOC).close()
    assert (tmp_path / "n.rtp").read_bytes() == b""
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError):
            Recording.open(RecordDirs(tmp_path), bad, RecordFormat.ADHOC)
    with pytest.raises(FileNotFoundError):  # the command replies E50
        Recording.open(RecordDirs(tmp_path / "missing"), "n.rtp", RecordFormat.ADHOC)


def test_close_moves_from_the_spool(tmp_path: Path) -> None:
    spool, record = tmp_path / "spool", tmp_path / "record"
    spool.mkdir()
    record.mkdir()
    recording = Recording.open(RecordDirs(record, spool), "c1=ft.o.rtp", RecordFormat.ADHOC)
    recording.write(rtp(1), ("127.0.0.1", 4000), ("127.0.0.1", 5000), 2.5)
    recording.flush()
    assert recording.path == spool / "c1=ft.o.rtp" and recording.path.stat().st_size == 202
    assert list(record.iterdir()) == []  # stays in the spool while recording
    recording.close()
    assert recording.path == record / "c1=ft.o.rtp" and recording.move_error is None
    assert list(spool.iterdir()) == []
    assert len(read_file(recording.path)) == 1


def test_a_failed_move_is_logged_once_and_leaves_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    recording = Recording.open(
        RecordDirs(tmp_path / "gone", spool), "c1=ft.o.rtp", RecordFormat.ADHOC
    )
    recording.write(rtp(1), ("127.0.0.1", 4000), ("127.0.0.1", 5000), 2.5)
    with caplog.at_level(logging.WARNING, logger="pyrtpproxy.record"):
        recording.close()
        recording.close()
    assert recording.path == spool / "c1=ft.o.rtp" and recording.path.stat().st_size == 202
    assert recording.move_error is not None and recording.move_error.errno == errno.ENOENT
    assert not recording.failed
    assert len(caplog.records) == 1 and "stays in the spool" in caplog.records[0].getMessage()


# -- Wireshark opens what we write --------------------------------------------------------


def test_tshark_reads_the_pcap_with_good_checksums(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is not installed (Debian package tshark; scripts/test installs it)"
    streams = {
        "v4": (("127.0.0.1", 47000), ("127.0.0.1", 42512)),
        "v6": (("::1", 47400), ("2001:db8::7", 42512)),
    }
    for label, (src, dst) in streams.items():
        recording = Recording.open(RecordDirs(tmp_path), f"{label}.pcap", RecordFormat.PCAP)
        for seq in range(5):
            recording.write(rtp(seq, bytes(range(160))), src, dst, 1796149245.25 + seq * 0.02)
        recording.write(bytes([0x81, 200, 0, 6]) + bytes(24), (src[0], 47001), (dst[0], 42513), 9)
        recording.close()
        result = subprocess.run(
            [
                tshark, "-r", str(recording.path),
                "-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                "-d", "udp.port==42512,rtp", "-d", "udp.port==42513,rtcp",
                "-T", "fields", "-E", "separator=,",
                "-e", "frame.protocols", "-e", "udp.checksum.status", "-e", "rtp.seq",
                "-e", "ip.checksum.status", "-e", "ip.ttl", "-e", "ipv6.hlim",
            ],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        lines = result.stdout.splitlines()
        # udp.checksum.status and ip.checksum.status 1 are "Good"
        ip = "ip:udp:rtp,1,{},1,127," if label == "v4" else "ipv6:udp:rtp,1,{},,,64"
        assert lines[:5] == [f"eth:ethertype:{ip.format(seq)}" for seq in range(5)], lines
        assert lines[5].startswith("eth:ethertype:ip") and ":udp:rtcp,1," in lines[5], lines
