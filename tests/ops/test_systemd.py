"""contrib/systemd: the units verify, and the relay serves a socket passed the systemd way."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopback import stop_process
from pyrtpproxy.config import ControlSpec
from pyrtpproxy.ctl import ControlClient

from .conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "contrib" / "systemd"


def exec_start(unit: str = "pyrtpproxy.service", setting: str = "ExecStart") -> list[str]:
    """A unit's ExecStart (or ExecReload), runnable here: the relay from this checkout,
    $$ unescaped."""
    line = next(
        line.split("=", 1)[1]
        for line in (UNITS / unit).read_text().splitlines()
        if line.startswith(f"{setting}=")
    )
    argv = shlex.split(line)
    assert argv[:2] == ["/bin/sh", "-c"]
    script = argv[2].replace("$$", "$")
    here = f"{shlex.quote(sys.executable)} -m pyrtpproxy"
    assert "/usr/bin/pyrtpproxy" in script
    return ["/bin/sh", "-c", script.replace("/usr/bin/pyrtpproxy", here)]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_verify(tmp_path: Path) -> None:
    man8 = tmp_path / "man" / "man8"
    man8.mkdir(parents=True)
    shutil.copy(ROOT / "man" / "pyrtpproxy.8", man8)  # Documentation=man:pyrtpproxy(8)
    for unit in ("pyrtpproxy.service", "pyrtpproxy.socket", "pyrtpproxy@.service"):
        shutil.copy(UNITS / unit, tmp_path)
    # the template is verified as an instance: systemd finds pyrtpproxy@.service beside it
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "pyrtpproxy.service",
            "pyrtpproxy.socket",
            "pyrtpproxy@a.service",
        ],
        cwd=tmp_path,
        env={**os.environ, "MANPATH": str(tmp_path / "man"), "SYSTEMD_LOG_LEVEL": "notice"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_template_instances_run_side_by_side(tmp_path: Path) -> None:
    """Two instances of pyrtpproxy@.service, each with the control socket and port range of
    its own configuration file, serve their own sessions from their own ports."""
    instances = []
    try:
        for name, lo in (("a", 31200), ("b", 31300)):
            port = free_port(socket.SOCK_DGRAM)
            # -F: the unit runs as User=rtpproxy, the test perhaps as root (UDP control)
            env = {
                **os.environ,
                "CONTROL_SOCK": f"udp:127.0.0.1:{port}",
                "EXTRA_OPTS": f"-l 127.0.0.1 -m {lo} -M {lo + 99} -d INFO -F",
                "STATE_FILE": f"{tmp_path}/{name}/state.json",
            }
            (tmp_path / name).mkdir()
            log = (tmp_path / f"{name}.log").open("wb")
            process = subprocess.Popen(
                exec_start("pyrtpproxy@.service"), env=env, stdout=subprocess.DEVNULL, stderr=log
            )
            instances.append((process, port, lo))
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        assert wait_for(lambda: all("listening for commands" in f.read_text() for f in logs), 15.0)
        for _process, port, lo in instances:
            with ControlClient(ControlSpec.parse(f"udp:127.0.0.1:{port}"), 15.0) as client:
                assert client.request("V") == "20040107"
                assert (
                    lo
                    <= int(client.request("U same-call 127.0.0.1 5000 ftag").split()[0])
                    < lo + 100
                )
                assert client.request("G nsess_created") == "1"
    finally:
        for process, _port, _lo in instances:
            stop_process(process)
    for name in ("a", "b"):  # each instance journals its own call
        assert "same-call" in (tmp_path / name / "state.json").read_text()


def relay_env(tmp_path: Path) -> dict[str, str]:
    # CONTROL_SOCK must be ignored when systemd passes a socket
    return {
        **os.environ,
        "CONTROL_SOCK": f"unix:{tmp_path}/not-used.sock",
        "EXTRA_OPTS": "-l 127.0.0.1 -m 31000 -M 31100 -d INFO",
        "STATE_FILE": f"{tmp_path}/state.json",
        "RUNTIME_DIRECTORY": str(tmp_path),
    }


def check_relay(spec: str, tmp_path: Path, timeout: float = 15.0) -> None:
    with ControlClient(ControlSpec.parse(spec), timeout) as client:
        assert client.request("V") == "20040107"  # the first request may start the relay
        assert client.request("U sd-call 127.0.0.1 5000 ftag").split()[0].isdigit()
        assert client.request("G nsess_created") == "1"
        assert '"call_id":"sd-call"' in client.request("Zsessions")
    assert not (tmp_path / "not-used.sock").exists()


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "ctl.sock")


needs_socket_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
)


@contextlib.contextmanager
def socket_activated(
    tmp_path: Path, *listen: str, expect_start: bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """The unit's ExecStart under ``systemd-socket-activate LISTEN...``, once it listens;
    it starts the relay on the first connection or datagram."""
    log = tmp_path / "relay.log"
    process = subprocess.Popen(
        ["systemd-socket-activate", *listen, "-E", "CONTROL_SOCK", "-E", "EXTRA_OPTS",
         "-E", "STATE_FILE", "-E", "RUNTIME_DIRECTORY", *exec_start()],
        env=relay_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )  # fmt: skip
    try:
        assert wait_for(lambda: "Listening on " in log.read_text(), 5.0), log.read_text()
        yield process
        if expect_start:
            # systemd-socket-activate execs the service in place: stopping it stops the relay
            assert "pyrtpproxy" in Path(f"/proc/{process.pid}/cmdline").read_text()
    finally:
        stop_process(process)
    if expect_start:
        text = log.read_text()
        assert "listening for commands on systemd:" in text, text


@needs_socket_activate
def test_socket_activation_with_the_units_exec_start(tmp_path: Path, sock_path: str) -> None:
    with socket_activated(tmp_path, "-l", sock_path):
        check_relay(f"cunix:{sock_path}", tmp_path)


@needs_socket_activate
def test_socket_activation_of_a_tcp_socket(tmp_path: Path) -> None:
    port = free_port()
    with socket_activated(tmp_path, "-l", f"127.0.0.1:{port}"):
        check_relay(f"tcp:127.0.0.1:{port}", tmp_path)


@needs_socket_activate
def test_socket_activation_of_a_udp_socket(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    with (
        socket_activated(tmp_path, "--datagram", "-l", f"127.0.0.1:{port}"),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.settimeout(15.0)  # the datagram waits in the socket while the relay starts
        sock.sendto(b"cookie V", ("127.0.0.1", port))
        assert sock.recv(100) == b"cookie 20040107\n"  # the cookie protocol, as on udp:
        check_relay(f"udp:127.0.0.1:{port}", tmp_path)


@needs_socket_activate
def test_a_socket_of_no_control_kind_stops_the_start(tmp_path: Path, sock_path: str) -> None:
    with socket_activated(tmp_path, "--datagram", "-l", sock_path, expect_start=False) as process:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"c V", sock_path)
        assert process.wait(15) == 1
    line = "pyrtpproxy: systemd: socket 3 is AF_UNIX SOCK_DGRAM, not UDP, TCP or Unix stream"
    assert line in (tmp_path / "relay.log").read_text().splitlines()


def test_listen_fds_from_a_python_launcher(tmp_path: Path, sock_path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(16)
    fd = listener.fileno()
    launcher = (
        "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.environ['LISTEN_FDS'] = '1'; os.execv(sys.argv[1], sys.argv[1:])"
    )

    def to_fd3() -> None:
        os.dup2(fd, 3)

    process = subprocess.Popen(
        [sys.executable, "-c", launcher, *exec_start()],
        env=relay_env(tmp_path),
        preexec_fn=to_fd3,
        close_fds=False,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "relay.log").open("wb"),
    )
    listener.close()  # the relay holds it now
    try:
        check_relay(f"cunix:{sock_path}", tmp_path)
    finally:
        stop_process(process)


def test_reload_hands_over_to_a_new_relay(tmp_path: Path) -> None:
    """ExecReload starts a new relay that takes over the running one's sockets and
    session; the new one tells systemd (NOTIFY_SOCKET) it is the main process now."""
    notify_path = str(tmp_path / "notify.sock")
    spec = f"unix:{tmp_path}/ctl.sock"
    env = {**relay_env(tmp_path), "CONTROL_SOCK": spec, "NOTIFY_SOCKET": notify_path}
    log = (tmp_path / "relay.log").open("wb")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(15.0)
        first = subprocess.Popen(exec_start(), env=env, stdout=log, stderr=log)
        new_pid = 0
        try:
            assert notify.recv(4096) == b"READY=1"
            with ControlClient(ControlSpec.parse(spec), 5.0) as client:
                port = client.request("U kept 127.0.0.1 5000 ft").split()[0]
            reload = subprocess.run(exec_start(setting="ExecReload"), env=env, timeout=30)
            assert reload.returncode == 0  # returns once the new relay serves
            message = notify.recv(4096).decode()
            assert message.startswith("MAINPID=") and message.endswith("\nREADY=1"), message
            new_pid = int(message.split("\n")[0].removeprefix("MAINPID="))
            assert first.wait(10) == 0
            with ControlClient(ControlSpec.parse(spec), 5.0) as client:
                assert client.request("U kept 127.0.0.1 5000 ft").split()[0] == port
        finally:
            stop_process(first)
            if new_pid:
                os.kill(new_pid, signal.SIGTERM)
                assert wait_for(lambda: not Path(f"/proc/{new_pid}").exists(), 10.0)
