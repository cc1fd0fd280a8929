"""Calls survive a restart of the relay (``--state-file``): after a crash (``kill -9``) the
next start re-binds the ports and restores the sessions from the journal; a journal
that cannot be used is logged, set aside and skipped, and the relay starts anyway."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pyrtpproxy.media.record import RecordFormat, detect_format, read_file

from .conftest import Party, Relay, RelayFactory, free_port, parse_port, rtp_packet, wait_for
from .test_relay import Listener, setup_call

PartyFactory = Callable[..., Party]
INTERVAL = 0.02  # one RTP packet every 20 ms each way, as a G.711 call sends


class Flow:
    """RTP both ways through a call, numbered, until :meth:`stop`: each receiver notes
    every sequence number it got and when."""

    def __init__(self, caller: Party, to_b: int, callee: Party, to_a: int) -> None:
        self._ways = ((caller, to_b, callee, 0x1111), (callee, to_a, caller, 0x2222))
        self.sent = [0, 0]
        self.got: list[dict[int, float]] = [{}, {}]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True)]
        self._threads += [
            threading.Thread(target=self._receive, args=(way,), daemon=True) for way in (0, 1)
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        next_at = time.monotonic()
        seq = 0
        while not self._stop.is_set():
            for way, (sender, port, _receiver, ssrc) in enumerate(self._ways):
                header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc)
                with contextlib.suppress(OSError):  # ICMP port unreachable while it is down
                    sender.send(port, header + bytes(160))
                self.sent[way] = seq + 1
            seq += 1
            next_at += INTERVAL
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _receive(self, way: int) -> None:
        receiver = self._ways[way][2]
        while not self._stop.is_set():
            item = receiver.recv(0.05)
            if item is not None:
                self.got[way][struct.unpack_from("!H", item[0], 2)[0]] = time.monotonic()

    def received(self, way: int) -> int:
        return len(self.got[way])

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)

    def resumed(self, way: int, moment: float) -> tuple[int, float] | None:
        """The first packet received after ``moment``: its sequence number and arrival."""
        after = [(seq, at) for seq, at in list(self.got[way].items()) if at > moment]
        return min(after, key=lambda item: item[1]) if after else None

    def missing(self, way: int) -> list[int]:
        """Sequence numbers sent but never received (the last few may be in flight)."""
        got = self.got[way]
        return [seq for seq in range(self.sent[way] - 5) if seq not in got]


def journal_relay(relay_factory: RelayFactory, tmp_path: Path, *flags: str, ttl: int = 60) -> Relay:
    return relay_factory("--state-file", str(tmp_path / "state.json"), *flags, ttl=ttl)


def test_call_survives_kill9(
    relay_factory: RelayFactory, tmp_path: Path, parties: PartyFactory
) -> None:
    relay = journal_relay(relay_factory, tmp_path)
    caller, callee = parties(), parties()
    call = setup_call(relay, "crash1", caller, callee)
    flow = Flow(caller, call.b, callee, call.a)
    try:
        assert wait_for(lambda: flow.received(0) > 200 and flow.received(1) > 200, 8.0)
        before = relay.cmd("Q crash1 ft tt").split()
        relay.kill()
        started = time.monotonic()  # the new process starts now
        again = relay_factory(like=relay)
        assert wait_for(lambda: flow.resumed(0, started) and flow.resumed(1, started), 3.0)
        time.sleep(0.5)
    finally:
        flow.stop()
    for way in (0, 1):
        resumed = flow.resumed(way, started)
        assert resumed is not None
        first, resumed_at = resumed
        # media flows again within 1 s of the new relay's start...
        assert resumed_at - started <= 1.0, (way, resumed_at - started, again.log_text())
        # ...and nothing is lost from then on
        assert [seq for seq in flow.missing(way) if seq >= first] == []
    # the counters carried over, but for the last second's (the journal is written once a
    # second): more than the ~40 packets since the restart
    after = again.cmd("Q crash1 ft tt").split()
    for name, was, now in zip(("npkts_ina", "npkts_ino"), before[1:3], after[1:3], strict=True):
        assert int(now) >= int(was) - 1.1 / INTERVAL > 100, (name, before, after)
    assert "restored 1 sessions from the state file (0 skipped)" in again.log_text()
    # Kamailio's later commands for the call
    assert parse_port(again.cmd(f"L crash1 127.0.0.1 {callee.port} ft tt")) == call.b
    assert parse_port(again.cmd(f"U crash1 127.0.0.1 {caller.port} ft tt")) == call.a
    assert again.cmd("D crash1 ft tt") == "0"
    assert again.cmd("Q crash1 ft tt") == "E50"
    again.stop()


def test_sigterm_keeps_sessions_for_the_next_start(
    relay_factory: RelayFactory, tmp_path: Path, parties: PartyFactory
) -> None:
    relay = journal_relay(relay_factory, tmp_path)
    caller, callee = parties(), parties()
    call = setup_call(relay, "term1", caller, callee)
    relay.stop()
    assert "1 sessions kept in" in relay.log_text()
    again = relay_factory(like=relay)
    assert parse_port(again.cmd(f"L term1 127.0.0.1 {callee.port} ft tt")) == call.b
    caller.send(call.b, b"\x80\x00\x00\x01" + bytes(168))
    assert callee.recv(1.0) is not None


def test_idle_session_times_out_across_crash(
    relay_factory: RelayFactory, tmp_path: Path, parties: PartyFactory
) -> None:
    notify_path = str(tmp_path / "notify.sock")
    listener = Listener.unix(notify_path)
    try:
        relay = journal_relay(relay_factory, tmp_path, "-n", f"unix:{notify_path}", ttl=3)
        created = time.monotonic()
        parse_port(relay.cmd(f"U idle1 127.0.0.1 5000 ft unix:{notify_path} idle_tag"))
        parse_port(relay.cmd("L idle1 127.0.0.1 5002 ft tt"))
        assert wait_for(lambda: b"idle1" in (tmp_path / "state.json").read_bytes(), 2.0)
        relay.kill()
        time.sleep(1.0)  # down for a second: the timer keeps running meanwhile
        again = relay_factory(like=relay)
        assert wait_for(lambda: listener.data == b"idle_tag\n", 6.0), again.log_text()
        # -T 3 lives T + 1 = 4 s after the L, wherever the seconds were spent
        elapsed = time.monotonic() - created
        assert 3.5 <= elapsed <= 5.5, elapsed
        assert again.cmd("Q idle1 ft tt") == "E50"
        assert "session timeout: call-id='idle1'" in again.log_text()
    finally:
        listener.close()


def crashed_journal(relay_factory: RelayFactory, tmp_path: Path, *flags: str) -> tuple[Relay, int]:
    """A relay killed with one call in its journal; the call's leg A port."""
    relay = journal_relay(relay_factory, tmp_path, *flags)
    port = parse_port(relay.cmd("U bad1 127.0.0.1 5000 ft"))
    parse_port(relay.cmd("L bad1 127.0.0.1 5002 ft tt"))
    assert wait_for(lambda: b"bad1" in (tmp_path / "state.json").read_bytes(), 2.0)
    relay.kill()
    return relay, port


def starts_without_the_call(relay_factory: RelayFactory, crashed: Relay) -> Relay:
    again = relay_factory(like=crashed)
    assert again.cmd("Q bad1 ft tt") == "E50"
    assert parse_port(again.cmd("U new1 127.0.0.1 5000 ft")) > 0  # serves new calls
    return again


def test_corrupt_journal_is_set_aside(relay_factory: RelayFactory, tmp_path: Path) -> None:
    crashed, _port = crashed_journal(relay_factory, tmp_path)
    state = tmp_path / "state.json"
    state.write_bytes(state.read_bytes()[:100])  # as a bad disk could leave it
    again = starts_without_the_call(relay_factory, crashed)
    assert re.search(r"state file .*state\.json: not a journal \(corrupt\)", again.log_text())
    assert (tmp_path / "state.json.bad").read_bytes().startswith(b'{"format"')
    # the journal is the new relay's own again
    assert wait_for(lambda: b"new1" in state.read_bytes(), 2.0)


def test_journal_of_another_version_is_skipped(relay_factory: RelayFactory, tmp_path: Path) -> None:
    crashed, _port = crashed_journal(relay_factory, tmp_path)
    state = tmp_path / "state.json"
    document = json.loads(state.read_bytes())
    document["version"] = 99
    state.write_text(json.dumps(document))
    again = starts_without_the_call(relay_factory, crashed)
    assert "journal version 99, this relay reads version 1" in again.log_text()


def test_bad_entry_is_skipped_alone(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = journal_relay(relay_factory, tmp_path)
    parse_port(relay.cmd("U good1 127.0.0.1 5000 ft"))
    parse_port(relay.cmd("U bad1 127.0.0.1 5000 ft"))
    relay.stop()
    state = tmp_path / "state.json"
    document = json.loads(state.read_bytes())
    for entry in document["sessions"]:
        if entry[0] == "bad1":  # its call-id
            del entry[-1]  # its legs
    state.write_text(json.dumps(document))
    again = starts_without_the_call(relay_factory, relay)
    assert again.cmd("Q good1 ft").split()[0].isdigit()
    assert "skipped entry" in again.log_text() and "call-id='bad1'" in again.log_text()


def test_session_whose_port_is_busy_is_skipped(relay_factory: RelayFactory, tmp_path: Path) -> None:
    metrics_port = free_port()
    crashed, port = crashed_journal(
        relay_factory, tmp_path, "--metrics-listen", f"127.0.0.1:{metrics_port}"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        again = starts_without_the_call(relay_factory, crashed)
    assert re.search(
        rf"session not restored: call-id='bad1' tag='ft': port {port} or {port + 1} "
        r"on 127\.0\.0\.1 is busy",
        again.log_text(),
    )
    assert "restored 0 sessions from the state file (1 skipped)" in again.log_text()
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        scraped = page.read().decode()
    assert "pyrtpproxy_sessions_not_restored_total 1.0" in scraped
    assert "pyrtpproxy_sessions_restored_total 0.0" in scraped


class Commands:
    """Kamailio's side during a hand-over: commands back to back over the unix and the
    UDP socket until :meth:`stop`, every reply noted."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.replies: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for send in (self.relay.cmd, lambda c: self.relay.udp(c).split(" ", 1)[1]):
                command = "U busy 127.0.0.1 5000 ft"  # the same session each time
                try:
                    reply = send(command)
                except OSError as exc:
                    self.failures.append(f"{command}: {exc!r}")
                    continue
                (self.replies if reply.split()[0].isdigit() else self.failures).append(reply)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_planned_restart_loses_no_packet_and_no_command(
    relay_factory: RelayFactory, tmp_path: Path, parties: PartyFactory
) -> None:
    relay = journal_relay(relay_factory, tmp_path)
    caller, callee = parties(), parties()
    call = setup_call(relay, "hand1", caller, callee)
    flow = Flow(caller, call.b, callee, call.a)
    commands = Commands(relay)
    relays = [relay]
    try:
        assert wait_for(lambda: flow.received(0) > 25 and flow.received(1) > 25, 5.0)
        for _generation in range(2):  # the successor hands over again
            old = relays[-1]
            relays.append(relay_factory(like=old))
            assert old.wait_exit() == 0
            old.stopped = True  # its sockets and files are the successor's now
            sent = list(flow.sent)
            assert wait_for(lambda s=sent: flow.sent[0] > s[0] + 25, 3.0)
        time.sleep(0.3)
    finally:
        commands.stop()
        flow.stop()
    new = relays[-1]
    for way in (0, 1):
        assert flow.missing(way) == [], (way, flow.missing(way)[:10])
    assert commands.failures == [] and len(commands.replies) > 20
    for old in relays[:-1]:
        assert "the new relay serves our sockets and sessions now; exiting" in old.log_text()
    assert "took over from the previous relay" in new.log_text()
    assert parse_port(new.cmd(f"L hand1 127.0.0.1 {callee.port} ft tt")) == call.b
    assert new.cmd("D hand1 ft tt") == "0"


def test_a_successor_that_goes_away_leaves_the_relay_serving(
    relay_factory: RelayFactory, tmp_path: Path, parties: PartyFactory
) -> None:
    relay = journal_relay(relay_factory, tmp_path)
    caller, callee = parties(), parties()
    call = setup_call(relay, "stay1", caller, callee)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as quitter:
        quitter.settimeout(5)
        quitter.connect(str(tmp_path / "state.json.handover"))
        quitter.send(json.dumps({"hello": 1, "pid": 1}).encode())
        while True:  # take the sockets, then leave without confirming
            data, fds, _flags, _addr = socket.recv_fds(quitter, 65536, 256)
            for fd in fds:
                socket.socket(fileno=fd).close()
            if json.loads(data).get("done"):
                break
    assert wait_for(lambda: "serving again" in relay.log_text(), 5.0), relay.log_text()
    caller.send(call.b, b"\x80\x00\x00\x01" + bytes(168))
    assert callee.recv(1.0) is not None
    assert relay.cmd("Q stay1 ft tt").split()[0].isdigit()
    assert relay.udp("Q stay1 ft tt").split()[1].isdigit()
    # and it hands over properly later
    again = relay_factory(like=relay)
    assert relay.wait_exit() == 0
    relay.stopped = True
    assert parse_port(again.cmd(f"L stay1 127.0.0.1 {callee.port} ft tt")) == call.b


def test_recordings_continue_in_the_same_files(
    relay_factory: RelayFactory, tmp_path: Path, parties: PartyFactory
) -> None:
    """A recording goes on across a takeover and a crash: the same pcap file (one
    header), every packet in it, moved out of the spool when the recording ends."""
    record, spool = tmp_path / "rec", tmp_path / "spool"
    record.mkdir()
    spool.mkdir()
    relay = journal_relay(relay_factory, tmp_path, "-r", str(record), "-S", str(spool), "-P")
    caller, callee = parties(), parties()
    call = setup_call(relay, "rec9", caller, callee)
    assert relay.cmd("Rs rec9 ft tt") == "0"
    sent = [rtp_packet(seq) for seq in range(30)]

    def talk(seqs: range) -> None:
        for seq in seqs:
            caller.send(call.b, sent[seq])
            assert callee.recv(1.0) is not None, seq

    talk(range(10))
    taker = relay_factory(like=relay)
    assert relay.wait_exit() == 0
    relay.stopped = True
    talk(range(10, 20))
    time.sleep(1.2)  # in the journal, flushed
    taker.kill()
    again = relay_factory(like=taker)
    talk(range(20, 30))
    assert [p.name for p in spool.iterdir()] == ["rec9=ft.pcap"]  # still being written
    assert again.cmd("D rec9 ft tt") == "0"
    path = record / "rec9=ft.pcap"
    assert detect_format(path.read_bytes()) is RecordFormat.PCAP
    assert [r.payload for r in read_file(path)] == sent
