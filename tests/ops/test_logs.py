"""Logs: one line per session event with call-id and tag, none per packet (the bad-command
rate limit is tested with the processor, tests/control/test_processor.py)."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

from pyrtpproxy.config import ControlSpec
from pyrtpproxy.ctl import ControlClient

from .conftest import Party, start_relay, wait_for


class NotifyListener:
    """A Unix stream socket that collects timeout notifications."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(8.0)
        self.received = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(8.0)
            while b"\n" not in self.received:
                try:
                    chunk = conn.recv(1024)
                except OSError:
                    return
                if not chunk:
                    return
                self.received += chunk

    def close(self) -> None:
        self.sock.close()


def test_session_events_are_logged_once_each(tmp_path: Path) -> None:
    notify_path = str(tmp_path / "notify.sock")
    listener = NotifyListener(notify_path)
    relay = start_relay(tmp_path, "-T", "3", "-W", "1", "-n", f"unix:{notify_path}")
    caller, callee, mover = Party(), Party(), Party()
    try:
        with ControlClient(ControlSpec.parse(relay.udp_spec)) as client:
            # the caller is behind NAT: its SDP says port 5000, its media comes from elsewhere
            u_port = int(client.request("U logcall 127.0.0.1 5000 ftag").split()[0])
            l_port = int(client.request(f"L logcall 127.0.0.1 {callee.port} ftag ttag").split()[0])
            caller.send(l_port, 100)
            callee.send(u_port, 100)
            assert wait_for(lambda: callee.drain() + caller.drain() > 0, 3.0)
            # the NAT binding changes: same stream (SSRC, sequence) from a new port
            mover.send(l_port, 100, start=100)
            assert wait_for(lambda: callee.drain() > 0, 3.0)
            assert client.request("D logcall ftag ttag") == "0"
            # an incomplete session with a notification request: times out after ~2 s
            assert client.request(f"U tocall 127.0.0.1 7000 ftag2 {notify_path} ntag")[0].isdigit()
        assert wait_for(lambda: "session notified" in relay.log_text(), 8.0, 0.1)
        listener.thread.join(5)
        assert listener.received == b"ntag\n"
    finally:
        for party in (caller, callee, mover):
            party.close()
        relay.stop()
        listener.close()
    log = relay.log_text()
    call_lines = [line for line in log.splitlines() if "'logcall'" in line]
    events = [re.search(r"session (\S+):", line).group(1) for line in call_lines]  # type: ignore[union-attr]
    assert events.count("created") == 1
    assert events.count("completed") == 1
    assert events.count("deleted") == 1
    assert events.count("re-latched") == 1
    assert events.count("latched") >= 2  # RTP each way (RTCP latches only with RTCP)
    assert len(call_lines) < 12, call_lines  # 300 packets, no per-packet lines
    assert all("tag='ftag'" in line and " INFO " in line for line in call_lines)
    assert re.search(
        rf"latched: .*leg B RTP to Endpoint\(host='127\.0\.0\.1', port={caller.port}\)", log
    )
    timeout_lines = [line for line in log.splitlines() if "'tocall'" in line]
    assert any("session timeout:" in line and "tag='ftag2'" in line for line in timeout_lines)
    assert any("session notified:" in line and "tag='ntag'" in line for line in timeout_lines)
