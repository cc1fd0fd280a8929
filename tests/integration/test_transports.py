"""Every control transport against a real relay process (protocol.md §1, edge-cases.md)."""

from __future__ import annotations

import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import (
    PYRTPPROXY,
    VERSION,
    Party,
    Relay,
    RelayFactory,
    free_port,
    ipv6_available,
    parse_port,
    rtp_packet,
    wait_for,
)

# --- unix: (one command per connection) ---------------------------------------------------


def test_unix_kamailio_style(relay: Relay) -> None:
    assert relay.unix("V") == VERSION + "\n"
    assert relay.unix("VF 20050322") == "1\n"
    assert relay.unix("V\n") == VERSION + "\n"  # newline optional
    assert relay.unix("V\r\n") == VERSION + "\n"
    # the whole buffer is one command: newline is just whitespace
    assert relay.unix("V\nVF 20040107\n") == "E1\n"
    reply = relay.cmd("U kam1 127.0.0.1 5000 ft")
    port = parse_port(reply)
    assert reply == f"{port} 127.0.0.1"
    assert relay.port_min <= port <= relay.port_max and port % 2 == 0
    assert relay.cmd("U kam1 127.0.0.1 5000 ft") == reply  # same session, same port
    assert relay.cmd("D kam1 ft") == "0"


def test_unix_empty_connection_is_not_a_command(relay: Relay) -> None:
    before = relay.counter("ncmds_rcvd")[0]
    for _ in range(5):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(relay.unix_path)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(255) == b""  # no reply, just closed
    after = relay.counter("ncmds_rcvd")[0]
    assert after - before == 1  # only the first G itself


def test_unix_command_larger_than_8191_bytes(relay: Relay) -> None:
    big = b"V " + b"a" * 9000
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(relay.unix_path)
        sock.sendall(big)
        try:
            reply = sock.recv(255)
        except ConnectionResetError:
            reply = b"<reset>"
    # first 8191 bytes parsed as one command (V with an extra argument) or a reset
    assert reply in (b"E1\n", b"<reset>"), reply
    assert relay.unix("V") == VERSION + "\n"
    assert relay.alive()


# --- stream transports ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cunix", "tcp"])
def test_stream_pipelining_and_partial_lines(relay: Relay, kind: str) -> None:
    client = relay.cunix() if kind == "cunix" else relay.tcp()
    with client:
        client.send(b"V\nVF 20040107\nVF 19990101\nG nsess_created\n")
        assert [client.readline() for _ in range(4)] == [VERSION, "1", "0", "0"]
        # a partial line gets no reply until its newline
        client.send(b"V")
        with pytest.raises(TimeoutError):
            client.readline(timeout=0.4)
        client.send(b"F 20040107\nV")
        assert client.readline() == "1"
        client.send(b"\r\n")
        assert client.readline() == VERSION
        # no cookies on stream transports
        assert client.command("abc V") == "E0"
        assert client.command("") == "E5"
        assert client.command("  \t ") == "E5"
        # a session made here is visible over unix
        port = parse_port(client.command(f"U {kind}1 127.0.0.1 6000 ft"))
        assert relay.cmd(f"U {kind}1 127.0.0.1 6000 ft") == f"{port} 127.0.0.1"
        assert client.command(f"D {kind}1 ft") == "0"


def test_cunix_abc_v_is_unknown_command(relay: Relay) -> None:
    with relay.cunix() as client:
        assert client.command("abc V") == "E0"
        assert client.command("V") == VERSION


def test_stream_line_length_limits(relay: Relay) -> None:
    with relay.cunix() as client:
        line = "V " + "a" * 4996  # 4998 bytes + newline
        assert client.command(line) == "E1"
        assert client.command("V") == VERSION
    for payload in (b"V " + b"a" * 9000 + b"\n", b"V " + b"a" * 9000):
        with relay.cunix() as client:
            client.send(payload)
            with pytest.raises((EOFError, ConnectionResetError)):
                client.readline(timeout=3)
    with relay.tcp() as client:
        client.send(b"V " + b"b" * 20000 + b"\nV\n")
        with pytest.raises((EOFError, ConnectionResetError)):
            client.readline(timeout=3)
    assert relay.unix("V") == VERSION + "\n"


# --- UDP -----------------------------------------------------------------------------------


def test_udp_cookies(relay: Relay) -> None:
    assert relay.udp_raw(b"abc V") == b"abc " + VERSION.encode() + b"\n"
    assert relay.udp_raw(b"k4") == b"k4 E5\n"
    assert relay.udp_raw(b"") == b"E5\n"
    assert relay.udp_raw(b"   \n") == b"E5\n"
    assert relay.udp_raw(b"V") == b"V E5\n"
    assert relay.udp_raw(b"k10\tV\n") == b"k10 " + VERSION.encode() + b"\n"
    reply = relay.udp("U udp1 127.0.0.1 5000 ft", cookie="k2")
    cookie, port, addr = reply.split()
    assert cookie == "k2" and int(port) > 0 and addr == "127.0.0.1"


def test_udp_retransmission_is_not_re_executed(relay: Relay) -> None:
    created0, dups0 = relay.counter("nsess_created", "ncmds_rcvd_ndups")
    first = relay.udp("U retx 127.0.0.1 5000 ft", cookie="rt1")
    again = relay.udp("U retx 127.0.0.1 5000 ft", cookie="rt1")
    assert first == again
    # a new cookie sees exactly one new session
    created = relay.udp("G nsess_created").split()[1]
    assert int(created) == created0 + 1
    # a different command with a reused cookie gets the cached reply, unexecuted
    assert relay.udp("D retx ft", cookie="rt1") == first
    assert relay.udp("V", cookie="rt1") == first
    assert relay.cmd("Q retx ft")[0] != "E"  # the D above did not run
    created1, dups1 = relay.counter("nsess_created", "ncmds_rcvd_ndups")
    assert created1 == created0 + 1
    assert dups1 - dups0 == 3
    # a retransmission from another source port still hits the cache (keyed on cookie)
    v1 = relay.udp("V", cookie="abc")
    assert v1 == f"abc {VERSION}"
    assert relay.udp("G nsess_created", cookie="abc") == v1


@pytest.mark.skipif(not ipv6_available(), reason="IPv6 loopback ::1 unavailable")
def test_udp6_and_tcp6(relay_factory: RelayFactory) -> None:
    udp6 = free_port(socket.SOCK_DGRAM, socket.AF_INET6)
    tcp6 = free_port(socket.SOCK_STREAM, socket.AF_INET6)
    relay = relay_factory("-s", f"udp6:::1:{udp6}", "-s", f"tcp6:::1:{tcp6}")
    reply = relay.udp_raw(b"c6 V", host="::1", port=udp6, family=socket.AF_INET6)
    assert reply == b"c6 " + VERSION.encode() + b"\n"
    assert relay.udp_raw(b"c7", host="::1", port=udp6, family=socket.AF_INET6) == b"c7 E5\n"
    reply = relay.udp_raw(
        b"c8 U v6call 127.0.0.1 5000 ft", host="::1", port=udp6, family=socket.AF_INET6
    )
    port = int(reply.split()[1])
    with relay.tcp("::1", tcp6) as client:
        client.send(b"V\nL v6call 127.0.0.1 5002 ft tt\n")
        assert client.readline() == VERSION
        parse_port(client.readline())
        assert client.command("U v6call 127.0.0.1 5000 ft") == f"{port} 127.0.0.1"
        assert client.command("D v6call ft") == "0"


def test_stdio(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*PYRTPPROXY, "-f", "-F", "-s", "stdio:", "-p", "/dev/null", "-d", "ERR",
         "-l", "127.0.0.1", "-m", "31000", "-M", "31099"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"V\nVF 20040107\nU st1 127.0.0.1 5000 ft\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == VERSION.encode() + b"\n"
        assert proc.stdout.readline() == b"1\n"
        port_line = proc.stdout.readline().decode()
        port = parse_port(port_line)
        assert port_line == f"{port} 127.0.0.1\n"
        proc.stdin.write(b"abc V\nQ st1 ft\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"E0\n"
        assert proc.stdout.readline().split()[0].isdigit()
        proc.stdin.close()  # EOF on the only control socket ends the relay
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_all_transports_share_one_session_table(relay: Relay) -> None:
    a_port = relay.udp("U shared 127.0.0.1 5000 ft").split()[1]
    b_reply = relay.cmd("L shared 127.0.0.1 5002 ft tt")
    b_port = parse_port(b_reply)
    with relay.cunix() as cu:
        assert cu.command("U shared 127.0.0.1 5000 ft tt") == f"{a_port} 127.0.0.1"
    with relay.tcp() as tc:
        assert tc.command("L shared 127.0.0.1 5002 ft tt") == f"{b_port} 127.0.0.1"
        assert tc.command("Q shared ft tt").split()[1:] == ["0", "0", "0", "0"]
        assert tc.command("D shared ft tt") == "0"
    assert relay.udp("Q shared ft tt").split()[1] == "E50"


# --- load and misbehaving clients ----------------------------------------------------------


def test_200_concurrent_clients(relay_factory: RelayFactory) -> None:
    relay = relay_factory(ports=1000)
    barrier = threading.Barrier(200, timeout=20)

    def client(n: int) -> list[str]:
        problems: list[str] = []
        call = f"conc{n}"
        barrier.wait()
        reply = relay.unix(f"U {call} 127.0.0.1 {7000 + 2 * n} ft{n}")
        if not reply.endswith(" 127.0.0.1\n"):
            return [f"{call}: U gave {reply!r}"]
        port = reply.split()[0]
        cookie = f"cc{n}"
        r = relay.udp(f"U {call} 127.0.0.1 {7000 + 2 * n} ft{n}", cookie=cookie)
        if r != f"{cookie} {port} 127.0.0.1":
            problems.append(f"{call}: udp U gave {r!r}")
        r = relay.udp(f"L {call} 127.0.0.1 {9000 + 2 * n} ft{n} tt{n}")
        if len(r.split()) != 3:
            problems.append(f"{call}: udp L gave {r!r}")
        r = relay.unix(f"Q {call} ft{n} tt{n}")
        if len(r.split()) != 5:
            problems.append(f"{call}: Q gave {r!r}")
        r = relay.unix(f"D {call} ft{n}")
        if r != "0\n":
            problems.append(f"{call}: D gave {r!r}")
        return problems

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(client, range(200)))
    problems = [p for r in results for p in r]
    assert not problems, problems[:10]
    created, destroyed = relay.counter("nsess_created", "nsess_destroyed")
    assert created == 200 and destroyed == 200


def test_udp_burst_while_the_relay_is_busy_is_all_answered(relay: Relay) -> None:
    """Many proxy workers send at once while the relay is busy: the control socket's
    receive buffer queues the burst (the kernel's default holds about 250 of them)."""
    burst = 1500
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect(("127.0.0.1", relay.udp_port))
        os.kill(relay.pid, signal.SIGSTOP)  # busy: nothing is read meanwhile
        try:
            for n in range(burst):
                sock.send(b"b%d VF 20040107" % n)
        finally:
            os.kill(relay.pid, signal.SIGCONT)
        sock.settimeout(5)
        answered = set()
        while len(answered) < burst:
            try:
                cookie, reply = sock.recv(100).split()
            except TimeoutError:
                break
            assert reply == b"1"
            answered.add(cookie)
    assert len(answered) == burst


def test_idle_and_dropped_clients_cost_nothing(relay: Relay) -> None:
    baseline = relay.idle_fd_count()
    held: list[socket.socket] = []
    try:
        for _ in range(10):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(relay.unix_path)  # connects, sends nothing
            held.append(s)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(relay.cunix_path)
            c.sendall(b"V")  # partial line, then silence
            held.append(c)
            t = socket.create_connection(("127.0.0.1", relay.tcp_port))
            t.sendall(b"U half 127.0.0.1 50")  # mid-line
            held.append(t)
        # others are served meanwhile
        assert relay.unix("V") == VERSION + "\n"
        assert relay.udp("V").endswith(VERSION)
        with relay.cunix() as client:
            assert client.command("V") == VERSION
        # clients that drop mid-line
        for s in held[1::3]:
            s.close()
        for _ in range(10):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(relay.unix_path)
            s.close()
    finally:
        for s in held:
            s.close()
    assert relay.unix("V") == VERSION + "\n"
    assert relay.cmd("Q half ft") == "E50"  # the half line was never executed
    assert wait_for(lambda: relay.fd_count() <= baseline, 5.0), (relay.fd_count(), baseline)


def test_malformed_commands_do_not_disturb_sessions(
    relay: Relay, parties: Callable[..., Party]
) -> None:
    caller, callee = parties(), parties()
    a = parse_port(relay.cmd(f"U storm 127.0.0.1 {caller.port} ft"))
    b = parse_port(relay.cmd(f"L storm 127.0.0.1 {callee.port} ft tt"))
    for seq in range(3):
        caller.send(b, rtp_packet(seq))
        assert callee.recv() is not None
    before = relay.cmd("Q storm ft tt")
    rng = random.Random(1234)
    garbage: list[bytes] = [
        b"", b"\x00", b"U", b"U storm", b"Ux storm 127.0.0.1 1 ft", b"D", b"Dx storm ft",
        b"Q storm", b"L", b"Z", b"\xff\xfe", b"U " + b"x " * 30, b"U s 1.2.3.456 5 ft",
        b"U s 127.0.0.1 -1 ft", b"U s 127.0.0.1 5 ft && ", b"V && V", b"Qz storm ft tt",
        b"G nosuch", b"Ib", b"P storm", b"R storm", b"S", b"C storm", b"U\x00 storm",
        b"U storm 127.0.0.1 abc ft", b"U storm 127.0.0.1 5000 ft x y z w", b"%%%",
    ]  # fmt: skip
    garbage += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(150)]
    with relay.cunix() as cu:
        for junk in garbage:
            if junk:
                relay.unix(junk)
            relay.udp_raw(relay.new_cookie().encode() + b" " + junk)
            line = junk.replace(b"\n", b" ")
            reply = cu.command(line)
            assert reply  # every line gets one reply
    assert relay.cmd("Q storm ft tt") == before
    for seq in range(3, 6):
        caller.send(b, rtp_packet(seq))
        got = callee.recv()
        assert got is not None and got[1] == ("127.0.0.1", a)
    assert relay.cmd("Q storm ft tt npkts_ina nrelayed") == "6 6"


# --- signals and process lifetime ----------------------------------------------------------


def test_startup_line_names_the_interpreter(relay: Relay) -> None:
    started = next(line for line in relay.log_text().splitlines() if " started, media " in line)
    assert started.endswith(f"; CPython {platform.python_version()} at {sys.executable}")


def test_sighup_drains_then_exits(relay: Relay) -> None:
    parse_port(relay.cmd("U hup 127.0.0.1 5000 ft"))
    parse_port(relay.cmd("L hup 127.0.0.1 5002 ft tt"))
    os.kill(relay.pid, signal.SIGHUP)
    # Polling with U would race the signal: a U served just before it creates a session.
    assert wait_for(lambda: "graceful shutdown" in relay.log_text(), 3.0)
    assert relay.cmd("U hup2 127.0.0.1 5000 ft") == "E99"
    assert relay.udp("U hup3 127.0.0.1 5000 ft").split()[1] == "E99"
    time.sleep(1.5)  # a sweep or two: the relay must not exit while a session lives
    assert relay.alive()
    assert relay.cmd("Q hup ft tt").split()[1:] == ["0", "0", "0", "0"]
    assert relay.cmd("D hup ft") == "0"
    assert relay.wait_exit(5.0) == 0
    relay.stopped = True
    assert not os.path.exists(relay.unix_path)
    assert not os.path.exists(relay.cunix_path)
    assert not relay.pidfile.exists()


def test_sigterm_removes_socket_and_pidfile(relay: Relay) -> None:
    assert relay.pidfile.read_text().strip() == str(relay.pid)
    parse_port(relay.cmd("U term 127.0.0.1 5000 ft"))
    assert relay.stop() == 0
    assert not os.path.exists(relay.unix_path)
    assert not relay.pidfile.exists()


def _run_startup(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*PYRTPPROXY, *args],
        capture_output=True,
        timeout=15,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["-s", "stdio:"],
        ["-f", "-s", "bogus:xyz"],
        ["-f", "-s", "udp:127.0.0.1:notaport"],
        ["-f", "-m", "20000", "-M", "10000"],
        ["-f", "-u", "nosuchuser"],
        ["-f", "-l", "192.0.2.77"],
        ["-f", "--kernel-forward", "-u", "root"],
        ["-f", "--kernel-forward", "--nft-table", "no-dashes"],
    ],
    ids=[
        "stdio-no-f",
        "bad-s",
        "bad-udp-port",
        "m-gt-M",
        "unknown-user",
        "unusable-l",
        "kernel-forward-with-u",
        "bad-nft-table",
    ],
)
def test_startup_errors(tmp_path: Path, args: list[str]) -> None:
    sock = str(tmp_path / "x.sock")
    full = [*args, "-F", "-p", str(tmp_path / "pid"), "-d", "INFO"]
    if "-s" not in args:
        full += ["-s", f"unix:{sock}"]
    result = _run_startup(tmp_path, *full)
    lines = [line for line in result.stderr.decode(errors="replace").splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, lines)
    assert len(lines) == 1, lines
    assert not os.path.exists(sock)
    assert not (tmp_path / "pid").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-l", "192.0.2.77"], "-l 192.0.2.77: cannot use this listen address: "),
        (["-6", "2001:db8::77"], "-6 2001:db8::77: cannot use this listen address: "),
        (
            ["--latching", "rtpproxy", "--latching-window", "100"],
            "--latching-window applies to --latching safe only",
        ),
        (["--latching-window", "10001"], "--latching-window must be between 0 and 10000 ms"),
    ],
    ids=["l", "6", "window-without-safe", "window-too-long"],
)
def test_startup_error_names_the_flag(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run_startup(tmp_path, "-f", "-F", "-p", "/dev/null", "-s", "stdio:", *args)
    assert result.returncode == 1, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"pyrtpproxy: {message}"), lines


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["tcp:127.0.0.1:notaport"], "-n tcp:127.0.0.1:notaport: port must be a number 1-65535"),
        (["tcp:localhost:9999"], "-n tcp:localhost:9999: host must be a numeric IPv4 address, "
         "an [IPv6] address or %%CC_SELF%%"),
        (["unix:"], "-n unix:: the socket path is empty"),
        ([f"tcp:%%CC_SELF%%:{port}" for port in (9001, 9002, 9003)],
         "at most 2 -n tcp:%%CC_SELF%%:PORT targets"),
    ],
    ids=["port", "host", "path", "wildcards"],
)  # fmt: skip
def test_bad_notify_target_stops_the_start(
    tmp_path: Path, targets: list[str], message: str
) -> None:
    # These used to start cleanly and then drop every notification.
    sock = tmp_path / "x.sock"
    args = [arg for target in targets for arg in ("-n", target)]
    result = _run_startup(tmp_path, "-f", "-F", "-p", "/dev/null", "-s", f"unix:{sock}", *args)
    assert result.returncode == 1, result
    assert result.stderr.decode().splitlines() == [f"pyrtpproxy: {message}"]
    assert not sock.exists()


# The real CLI as a plain user would run it: its default socket and pid file go to a
# runtime directory under $XDG_RUNTIME_DIR (the tests run as root, so the uid is faked).
AS_PLAIN_USER = [
    PYRTPPROXY[0], "-c",
    "import os, sys; os.geteuid = lambda: 4242; "
    "from pyrtpproxy.cli import main; main(sys.argv[1:])",
]  # fmt: skip


def test_bad_options_create_no_runtime_directory(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    result = subprocess.run(
        [*AS_PLAIN_USER, "-f", "-m", "20000", "-M", "10000"],
        capture_output=True,
        timeout=15,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "XDG_RUNTIME_DIR": str(xdg)},
    )
    assert result.returncode == 1, result
    assert result.stderr.decode().splitlines() == [
        "pyrtpproxy: port range -m 20000 -M 10000 holds no RTP/RTCP pair"
    ]
    assert list(xdg.iterdir()) == []  # parsing the command line changed nothing


def test_start_up_makes_the_runtime_directory(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    runtime = xdg / "pyrtpproxy"
    base = random.randrange(20000, 30000, 2)
    proc = subprocess.Popen(
        [*AS_PLAIN_USER, "-f", "-l", "127.0.0.1", "-m", str(base), "-M", str(base + 99),
         "-d", "ERR"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "XDG_RUNTIME_DIR": str(xdg)},
    )  # fmt: skip
    try:
        assert wait_for(lambda: (runtime / "rtpproxy.sock").exists(), 10.0), proc.poll()
        assert runtime.stat().st_mode & 0o777 == 0o700
        assert (runtime / "rtpproxy.pid").read_text().strip() == str(proc.pid)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(runtime / "rtpproxy.sock"))
            sock.sendall(b"V")
            assert sock.recv(100) == VERSION.encode() + b"\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    assert proc.stderr is not None
    assert proc.stderr.read() == b""


def test_runtime_directory_that_cannot_be_made(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = subprocess.run(
        [*AS_PLAIN_USER, "-f", "-l", "127.0.0.1"],
        capture_output=True,
        timeout=15,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "XDG_RUNTIME_DIR": str(not_a_dir)},
    )
    assert result.returncode == 1, result
    assert result.stderr.decode().splitlines() == [
        f"pyrtpproxy: cannot create the runtime directory {not_a_dir}/pyrtpproxy: Not a directory"
    ]


def test_root_needs_F_for_udp(tmp_path: Path) -> None:
    udp = free_port(socket.SOCK_DGRAM)
    args = ["-f", "-s", f"udp:127.0.0.1:{udp}", "-p", "/dev/null", "-l", "127.0.0.1",
            "-m", "31200", "-M", "31299", "-d", "INFO"]  # fmt: skip
    if os.geteuid() == 0:
        result = _run_startup(tmp_path, *args)
        assert result.returncode == 1, result
        assert b"-F" in result.stderr or b"root" in result.stderr
    proc = subprocess.Popen(
        [*PYRTPPROXY, *args, "-F"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            reply = b""
            for _ in range(50):
                sock.sendto(f"r{_} V".encode(), ("127.0.0.1", udp))
                try:
                    reply = sock.recv(100)
                    break
                except TimeoutError:
                    continue
            assert reply.endswith(VERSION.encode() + b"\n"), reply
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0


def test_udp_datagram_larger_than_8191_bytes(relay: Relay) -> None:
    # truncated to 8191 bytes: the cookie, then one long token (the V is cut off)
    reply = relay.udp_raw(b"ck " + b"c" * 8990 + b" V")
    assert reply == b"ck E1\n"
    assert relay.udp("V").endswith(VERSION)


def test_g_without_names_is_an_empty_line(relay: Relay) -> None:
    assert relay.unix("G") == "\n"
    info = relay.unix("I")
    assert info.startswith("sessions created: 0\nactive sessions: 0\n"), info


def test_stream_connection_limit(relay: Relay) -> None:
    clients = [relay.cunix() for _ in range(100)]
    try:
        assert all(c.command("V") == VERSION for c in clients[::10])
        extra = relay.cunix()
        with pytest.raises((EOFError, ConnectionResetError, BrokenPipeError)):
            extra.command("V")
        extra.close()
        assert clients[-1].command("V") == VERSION
        assert relay.unix("V") == VERSION + "\n"  # one-shot unix is not limited
    finally:
        for c in clients:
            c.close()
    assert wait_for(lambda: _cunix_works(relay), 3.0)


def _cunix_works(relay: Relay) -> bool:
    try:
        with relay.cunix() as client:
            return client.command("V") == VERSION
    except (EOFError, OSError):
        return False


def test_sighup_without_sessions_exits_at_once(relay: Relay) -> None:
    os.kill(relay.pid, signal.SIGHUP)
    assert relay.wait_exit(3.0) == 0
    relay.stopped = True
    assert not os.path.exists(relay.unix_path)
    assert not relay.pidfile.exists()


@pytest.mark.parametrize("kind", ["stdio:", "stdioc:"])
def test_stdin_eof_with_other_control_sockets(tmp_path: Path, kind: str) -> None:
    sock = str(tmp_path / "s.sock")
    proc = subprocess.Popen(
        [*PYRTPPROXY, "-f", "-F", "-s", kind, "-s", f"unix:{sock}", "-p", "/dev/null",
         "-d", "ERR", "-l", "127.0.0.1", "-m", "31400", "-M", "31499"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"U eof1 127.0.0.1 5000 ft\n")
        proc.stdin.flush()
        parse_port(proc.stdout.readline().decode())
        proc.stdin.close()
        time.sleep(0.5)
        # stdio is not the only control socket: EOF does not end the relay
        assert proc.poll() is None
        client = Relay.__new__(Relay)
        client.unix_path = sock
        assert client.unix("V") == VERSION + "\n"
        new = client.unix("U eof2 127.0.0.1 5000 ft")
        if kind == "stdioc:":  # EOF started a graceful shutdown
            assert new == "E99\n"
            assert client.unix("D eof1 ft") == "0\n"
            assert proc.wait(4) == 0
        else:
            parse_port(new)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5) == 0
        assert not os.path.exists(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
