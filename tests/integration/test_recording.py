"""R, N and C on a real relay with real RTP (media-features.md §1, §2): the files it
writes are parsed back, tshark opens the pcap ones, copies arrive byte for byte."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyrtpproxy.media.record import RecordFormat, detect_format, read_file

from .conftest import Party, Relay, RelayFactory, free_port, rtcp_packet, rtp_packet, wait_for
from .test_relay import Call, relay_ok, setup_call

PartyFactory = Callable[..., Party]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    record, spool = tmp_path / "rec", tmp_path / "spool"
    record.mkdir()
    spool.mkdir()
    return record, spool


def _talk(call: Call, seqs: range, ssrc: int = 0x11223344) -> list[bytes]:
    """The caller sends RTP for ``seqs``; each packet is relayed. Returns what was sent."""
    sent = []
    for seq in seqs:
        relay_ok(call.caller, call.b, call.callee, seq, ssrc)
        sent.append(rtp_packet(seq, ssrc))
    return sent


def test_r_records_the_callers_stream_and_n_moves_it_out_of_the_spool(
    relay_factory: RelayFactory, parties: PartyFactory, dirs: tuple[Path, Path]
) -> None:
    record, spool = dirs
    relay = relay_factory("-r", str(record), "-S", str(spool))
    caller, callee = parties(), parties()
    call = setup_call(relay, "rec1", caller, callee)
    _talk(call, range(3))  # before R: not recorded
    assert relay.cmd("R rec1 ft tt") == "0"
    assert sorted(p.name for p in spool.iterdir()) == ["rec1=ft.o.rtcp", "rec1=ft.o.rtp"]
    sent = _talk(call, range(3, 13))
    relay_ok(callee, call.a, caller, 500, 0x55)  # the callee's media is not this leg's
    caller.send_rtcp(call.b + 1, rtcp_packet())
    assert callee.recv_rtcp(1.0) is not None
    assert relay.cmd("N rec1 ft tt") == "0"
    assert list(spool.iterdir()) == []
    records = read_file(record / "rec1=ft.o.rtp")
    assert [r.payload for r in records] == sent
    assert {(r.source.host, r.source.port) for r in records} == {("127.0.0.1", caller.port)}
    assert all(abs(r.time - time.time()) < 30 for r in records)  # wall clock
    rtcp = read_file(record / "rec1=ft.o.rtcp")
    assert [r.payload for r in rtcp] == [rtcp_packet()]
    assert relay.cmd("N rec1 ft tt") == "E50"  # nothing left to stop
    _talk(call, range(13, 15))  # the call goes on, back on the fast path
    assert len(read_file(record / "rec1=ft.o.rtp")) == 10


def test_both_directions_into_one_pcap_that_tshark_reads(
    relay_factory: RelayFactory, parties: PartyFactory, dirs: tuple[Path, Path]
) -> None:
    record, _spool = dirs
    relay = relay_factory("-r", str(record), "-P")
    caller, callee = parties(), parties()
    call = setup_call(relay, "p2", caller, callee)
    assert relay.cmd("Rs p2 ft tt") == "0"
    assert relay.cmd("Rs p2 ft tt") == "E50"
    assert relay.cmd("Rs p2 tt ft") == "0"
    for seq in range(20):
        relay_ok(caller, call.b, callee, seq)
        relay_ok(callee, call.a, caller, 1000 + seq, 0x55)
    assert relay.cmd("D p2 ft tt") == "0"  # D closes the file too
    path = record / "p2=ft.pcap"
    assert detect_format(path.read_bytes()) is RecordFormat.PCAP
    records = read_file(path)
    assert len(records) == 40
    into_b = [r for r in records if r.destination is not None and r.destination.port == call.b]
    assert [r.payload for r in into_b] == [rtp_packet(s) for s in range(20)]
    if shutil.which("tshark") is None:
        pytest.fail("tshark is needed (scripts/test installs it)")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-o", "udp.check_checksum:TRUE", "-T", "fields",
         "-e", "udp.srcport", "-e", "udp.checksum.status", "-d", f"udp.port=={call.b},rtp"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) == 40
    assert all(status == "1" for _port, status in rows), rows[:3]  # 1: checksum good
    assert {int(port) for port, _ in rows} == {caller.port, callee.port}


def test_record_errors_leave_the_call_alone(
    relay_factory: RelayFactory, parties: PartyFactory, tmp_path: Path
) -> None:
    relay = relay_factory("-r", str(tmp_path / "missing"))
    caller, callee = parties(), parties()
    call = setup_call(relay, "bad1", caller, callee)
    assert relay.cmd("R bad1 ft tt") == "E50"
    assert relay.cmd("R nosuch ft tt") == "E50"
    _talk(call, range(5))
    assert "cannot record call-id='bad1'" in relay.log_text()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): a disk that fills up during a call."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True, timeout=10,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], timeout=10, check=False)


def test_a_full_disk_stops_one_recording_not_the_relay(
    relay_factory: RelayFactory, parties: PartyFactory, small_disk: Path
) -> None:
    metrics_port = free_port()
    relay = relay_factory("-r", str(small_disk), "--metrics-listen", f"127.0.0.1:{metrics_port}")
    caller, callee = parties(), parties()
    call = setup_call(relay, "full1", caller, callee)
    other = setup_call(relay, "other1", parties(), parties())
    assert relay.cmd("R full1 ft tt") == "0"
    big = bytes(1200)
    for seq in range(120):  # 120 * 1.2 KB > 64 KiB
        call.caller.send(call.b, rtp_packet(seq)[:12] + big)
        assert call.callee.recv(1.0) is not None
    assert wait_for(lambda: "recording of call-id='full1' stopped" in relay.log_text(), 5.0)
    assert relay.log_text().count("recording of call-id='full1' stopped") == 1
    assert relay.cmd("Q full1 ft tt").split()[0] != "E50"  # the call itself goes on
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        scraped = page.read().decode()
    assert "pyrtpproxy_recording_errors_total 1.0" in scraped
    _talk(other, range(5))
    assert relay.alive()
    assert relay.cmd("D full1 ft tt") == "0"


def test_udp_copy_arrives_byte_for_byte_from_its_own_ports(
    relay: Relay, parties: PartyFactory
) -> None:
    caller, callee, recorder = parties(), parties(), parties()
    call = setup_call(relay, "k1", caller, callee)
    reply = relay.cmd(f"Cp k1 udp:127.0.0.1:{recorder.port} ft tt").split()
    assert len(reply) == 2 and reply[1] == "127.0.0.1"
    copy_port = int(reply[0])
    assert relay.cmd(f"C k1 udp:127.0.0.1:{recorder.port + 10} ft tt") == "0"  # slot taken
    sent = _talk(call, range(8))
    caller.send_rtcp(call.b + 1, rtcp_packet())
    got = [recorder.recv(1.0) for _ in sent]
    assert [g[0] for g in got if g] == sent
    assert {g[1] for g in got if g} == {("127.0.0.1", copy_port)}
    rtcp = recorder.recv_rtcp(1.0)
    assert rtcp is not None and rtcp == (rtcp_packet(), ("127.0.0.1", copy_port + 1))
    assert relay.cmd("N k1 ft tt") == "0"
    _talk(call, range(8, 10))
    assert recorder.recv(0.3) is None  # stopped
    # the copy's pair went back to the allocator
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", copy_port))


def test_copy_errors(relay: Relay, parties: PartyFactory) -> None:
    setup_call(relay, "k2", parties(), parties())
    assert relay.cmd("C k2 udp:no-such-host.invalid:4000 ft tt") == "E65"
    assert relay.cmd("C k2 udp:[::1]:4000 ft tt") == "E65"
    assert relay.cmd("C k2 somefile ft tt") == "E65"  # no -r
    assert relay.cmd("C nosuch udp:127.0.0.1:4000 ft tt") == "E50"
    for date in ("20071218", "20200226", "20250523"):
        assert relay.cmd(f"VF {date}") == "1"
