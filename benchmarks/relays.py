"""What every benchmark mode shares: the relays under test, how to start and stop them, and
how to read their CPU and memory from /proc (see benchmarks/README.md).

A relay is ``NAME=COMMAND``. COMMAND is an rtpproxy-compatible relay (the reference
rtpproxy, pyrtpproxy) that gets rtpproxy flags appended, or rtpengine (its executable is
named ``rtpengine``), which gets the equivalent rtpengine options: user space
(``--table=-1``), the rtpproxy protocol on a UDP listener (``--listen-udp``), no ng, CLI or
HTTP listener, no configuration file, loopback only. With IPv6 media an rtpproxy gets
``-6 v6@::1`` besides ``-l 127.0.0.1`` and rtpengine a second ``--interface=::1`` (it
answers ``U6``/``L6`` with a port on ::1); control stays on 127.0.0.1 either way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
RTPPROXY_VERSION = "20040107"  # what every relay answers to V
IPV6_MEDIA_ADDRESS = "::1"  # where relays and the generator's parties put IPv6 media


# Run by a relay's interpreter: what it is, and whether libpython is a shared library
_DESCRIBE_INTERPRETER = """
import os, platform, sys
with open("/proc/self/maps") as maps:
    shared = any("libpython" in line for line in maps)
linked = "libpython shared" if shared else "libpython linked in"
print(f"{platform.python_implementation()} {platform.python_version()} "
      f"{os.path.realpath(sys.executable)} ({linked})")
"""


class Interrupted(Exception):
    """Raised from the SIGTERM/SIGHUP handler so that cleanup runs."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ControlSocket:
    """A relay's control socket: ``udp`` on 127.0.0.1:port or ``unix`` at path."""

    transport: str
    port: int = 0
    path: str = ""

    @property
    def spec(self) -> str:
        """rtpproxy's ``-s`` argument."""
        return f"unix:{self.path}" if self.transport == "unix" else f"udp:127.0.0.1:{self.port}"


@dataclass(frozen=True)
class RelaySpec:
    """One relay under test; ``instances`` > 1 runs that many side by side (media mode)."""

    name: str
    command: list[str]
    instances: int = 1

    @property
    def kind(self) -> str:
        return "rtpengine" if Path(self.command[0]).name == "rtpengine" else "rtpproxy"

    @property
    def tag_suffix(self) -> str:
        """rtpengine takes only Kamailio's ``tag;medianum`` tags; rtpproxy both forms."""
        return ";1" if self.kind == "rtpengine" else ""

    @property
    def transports(self) -> tuple[str, ...]:
        """Control sockets it can serve the rtpproxy protocol on (rtpengine: UDP, TCP)."""
        return ("udp",) if self.kind == "rtpengine" else ("unix", "udp")

    def argv(
        self,
        control: ControlSocket,
        port_lo: int,
        port_hi: int,
        pidfile: Path,
        *,
        ipv6: bool = False,
    ) -> list[str]:
        """The command line: COMMAND plus the benchmark's options in this relay's dialect;
        ``ipv6`` puts the media on ::1 (the generator then sends ``U6``/``L6``)."""
        if self.kind == "rtpengine":
            if control.transport != "udp":
                raise ValueError(
                    f"{self.name}: rtpengine has no {control.transport} control socket"
                )
            return [
                *self.command, "--config-file=none", "--foreground", "--log-stderr",
                "--log-level=3", "--table=-1", "--interface=127.0.0.1",
                *([f"--interface={IPV6_MEDIA_ADDRESS}"] if ipv6 else []),
                f"--listen-udp=127.0.0.1:{control.port}", f"--port-min={port_lo}",
                f"--port-max={port_hi}", "--timeout=60", "--delete-delay=0",
                f"--pidfile={pidfile}",
            ]  # fmt: skip
        # Not "-p /dev/null": the reference rtpproxy unlink()s its pid file at exit whatever
        # it is (main.c ehandler), so running it as root with -p /dev/null deletes /dev/null.
        return [
            *self.command, "-f", "-F", "-s", control.spec, "-l", "127.0.0.1",
            "-m", str(port_lo), "-M", str(port_hi), "-T", "60", "-p", str(pidfile),
            "-d", "ERR", "-L", str(nofile_limit()),
            # the reference wants a label on a listen address after the first; U6 finds it
            *(["-6", f"v6@{IPV6_MEDIA_ADDRESS}"] if ipv6 else []),
        ]  # fmt: skip

    def version(self) -> str:
        """First line of ``COMMAND -V`` (rtpengine: ``--version``)."""
        flag = "--version" if self.kind == "rtpengine" else "-V"
        try:
            res = subprocess.run(
                [*self.command, flag], capture_output=True, timeout=20, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"? ({exc})"
        out = (res.stdout or res.stderr).decode(errors="replace").strip().splitlines()
        version = out[0] if out else "?"
        interpreter = self.interpreter()
        return version if interpreter is None else f"{version}; {interpreter}"

    def interpreter(self) -> str | None:
        """The Python that runs the relay (its script's ``#!`` line), with how its
        libpython is linked: the same code answers up to a sixth fewer commands per
        second on a shared, unoptimized build (pyenv's) than on a distribution's
        (benchmarks/README.md, "Which Python")."""
        program = self.command[0]
        if Path(program).name.startswith("python"):  # python -m pyrtpproxy
            python = [program]
        else:
            try:
                with Path(program).open("rb") as script:
                    first = script.readline(512)
            except OSError:
                return None
            python = first[2:].decode(errors="replace").split() if first[:2] == b"#!" else []
            if not python or not Path(python[-1]).name.startswith("python"):
                return None  # a binary, or a script of another language
        try:
            res = subprocess.run(
                [*python, "-c", _DESCRIBE_INTERPRETER], capture_output=True, timeout=20,
                check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"python ? ({exc})"
        return res.stdout.decode(errors="replace").strip() or "python ?"


def parse_relays(items: list[str], instance_counts: list[int] | None = None) -> list[RelaySpec]:
    """``NAME=COMMAND`` items; with several instance counts, one spec per relay and count
    (named NAMExN)."""
    counts = instance_counts or [1]
    relays: list[RelaySpec] = []
    for item in items:
        name, sep, cmd = item.partition("=")
        if not sep or not name or not cmd.strip():
            raise SystemExit(f"--relay expects NAME=COMMAND, got {item!r}")
        for n in counts:
            label = name if counts == [1] else f"{name}x{n}"
            if any(r.name == label for r in relays):
                raise SystemExit(f"duplicate relay name {label!r}")
            relays.append(RelaySpec(label, shlex.split(cmd), n))
    return relays


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The options every mode reads: relays, repeats, pinning, ports, output."""
    p.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="relay to measure (repeatable); COMMAND gets rtpproxy flags appended\n"
        "(rtpengine, recognised by its executable's name, the equivalent options)",
    )
    p.add_argument("--repeat", type=int, default=1, help="repeat every measurement K times")
    p.add_argument(
        "--baseline", help="relay NAME used as the denominator of ratios (default: first --relay)"
    )
    p.add_argument("--ctl-port", type=int, default=9400, help="relay UDP control port (9400)")
    p.add_argument("--port-min", type=int, default=10000, help="relay media port range start")
    p.add_argument(
        "--relay-cpu",
        default="0",
        help="CPU the relay is pinned to (0); a comma-separated list pins instance i to\n"
        "the i-th CPU of the list, round robin (--instances)",
    )
    p.add_argument(
        "--gen-cpu", type=int, default=1, help="CPU the generator or control clients use (1)"
    )
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=20.0,
        help="seconds a relay may take to answer V after start",
    )
    p.add_argument("--pause", type=float, default=1.0, help="seconds between measurements (1)")
    p.add_argument("--out", type=Path, help="raw JSON output (default benchmarks/out/...)")


def rounds(relays: list[RelaySpec], repeat: int) -> Iterator[tuple[int, list[RelaySpec]]]:
    """Each repeat with its relay order, alternating so that slow drift of the machine
    favours no relay."""
    for rep in range(repeat):
        yield rep, relays if rep % 2 == 0 else list(reversed(relays))


def relay_cpus(args: argparse.Namespace) -> list[int] | None:
    """The CPUs from ``--relay-cpu``, None when not pinning."""
    if args.no_pin:
        return None
    try:
        return [int(c) for c in str(args.relay_cpu).split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"--relay-cpu takes CPU numbers, got {args.relay_cpu!r}") from None


# --------------------------------------------------------------------------- /proc helpers


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # fields after the parenthesised command name; index 0 is field 3 (state)
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid plus all its descendant processes."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            parent[int(entry.name)] = int(fields[1])
    found = [pid]
    for _ in range(16):  # bounded depth
        new = [p for p, pp in parent.items() if pp in found and p not in found]
        if not new:
            break
        found.extend(new)
    return found


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process tree (each process's figure already covers all its threads)."""
    total = 0.0
    for p in descendants(pid):
        fields = _stat_fields(p)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def softirq_thread_seconds() -> float:
    """CPU time of the kernel's softirq threads (ksoftirqd/N), from their schedstat (ns)."""
    total = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if not comm.read_text().startswith("ksoftirqd/"):
                continue
            total += int((comm.parent / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


LOADGEN_SRC = HERE / "loadgen.c"
LOADGEN_BIN = HERE / "build" / "loadgen"


def build_loadgen() -> Path:
    """The C load generator (benchmarks/loadgen.c), built when its source is newer."""
    LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
    if LOADGEN_BIN.exists() and LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN_BIN
    cmd = ["gcc", "-O2", "-Wall", "-o", str(LOADGEN_BIN), str(LOADGEN_SRC)]
    log("building: " + shlex.join(cmd))
    subprocess.run(cmd, check=True, timeout=120)
    return LOADGEN_BIN


def loadgen_argv(
    args: argparse.Namespace,
    loadgen: Path,
    spec: RelaySpec,
    tag: str,
    sessions: int,
    seconds: float,
    members: list[tuple[int, int]],
) -> list[str]:
    """The generator's command line: ``sessions`` calls at ``--rate`` packets/s each way for
    ``seconds`` (after ``--warmup``), spread over ``members`` (UDP control port, relay pid)
    by call-id, weight 1 each; pinned to ``--gen-cpu`` unless ``--no-pin``."""
    argv = [
        str(loadgen), "--tag", tag, "--tag-suffix", spec.tag_suffix,
        "--sessions", str(sessions), "--duration", str(seconds),
        "--warmup", str(args.warmup), "--drain", str(args.drain),
        "--rate", str(args.rate),
        "--setup-timeout", str(args.setup_timeout), "--tick-us", str(args.tick_us),
        "--shared", str(args.gen_shared), *(["--ipv6"] if args.ipv6 else []),
    ]  # fmt: skip
    for ctl_port, pid in members:
        argv += ["--ctl", f"127.0.0.1:{ctl_port}=1", "--relay-pid", str(pid)]
    if not args.no_pin:
        argv = ["taskset", "-c", str(args.gen_cpu), *argv]
    return argv


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_facts() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_gib": round(mem_kb / 1048576, 1),
        "python": platform.python_version(),
    }


def nofile_limit() -> int:
    """-L value: 65536, or the hard RLIMIT_NOFILE when we may not raise it that far.

    The reference exits with "setrlimit: Operation not permitted" when -L exceeds the
    hard limit and the process lacks CAP_SYS_RESOURCE (as in unprivileged containers).
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 65536
    return min(65536, hard)


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


# --------------------------------------------------------------------------- relay process

_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def _kill(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    _STARTED.pop(proc.pid, None)


def kill_all_started() -> None:
    for proc in list(_STARTED.values()):
        _kill(proc, grace=3.0)


def control_query(port: int, cmd: str, timeout: float = 0.3) -> str | None:
    """One cookie-prefixed command over UDP to 127.0.0.1:port; the reply body or None."""
    cookie = f"rb{os.getpid()}x{time.monotonic_ns()}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(f"{cookie} {cmd}".encode(), ("127.0.0.1", port))
            data = s.recv(2048).decode(errors="replace")
        except OSError:
            return None
    if not data.startswith(cookie + " "):
        return None
    return data[len(cookie) + 1 :].strip()


def fd_count(pid: int) -> int | None:
    """Open file descriptors of one process."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def udp_sockets_in_range(pid: int, lo: int, hi: int) -> tuple[int, int] | None:
    """UDP sockets of one process bound to a port in lo..hi (IPv4 and IPv6), and how many
    distinct ports they hold (a relay may connect a second socket to a port it has bound):
    its socket descriptors' inodes looked up in its network namespace's /proc/net/udp."""
    try:
        links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
        inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
    except OSError:
        return None
    sockets = 0
    ports: set[int] = set()
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if lo <= port <= hi and fields[9] in inodes:
                    sockets += 1
                    ports.add(port)
    return sockets, len(ports)


def kernel_memory() -> dict[str, int]:
    """Machine-wide kernel figures that grow with sockets: the slab (kB, /proc/meminfo),
    UDP sockets in use and their buffer memory (pages, /proc/net/sockstat)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(("Slab:", "SUnreclaim:")):
                out[line.split(":")[0].lower() + "_kb"] = int(line.split()[1])
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("UDP:"):
                fields = line.split()[1:]
                values = dict(zip(fields[::2], fields[1::2], strict=True))
                out["udp_inuse"] = int(values["inuse"])
                out["udp_mem_pages"] = int(values["mem"])
    return out


def _raise_nofile() -> None:
    """In the relay's child: the soft descriptor limit up to the hard one (rtpengine has no -L)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_limit(), hard))


@contextlib.contextmanager
def relay_process(
    spec: RelaySpec,
    control: ControlSocket,
    port_lo: int,
    port_hi: int,
    cpu: int | None,
    logfile: Path,
    ready_timeout: float,
    *,
    probe: Callable[[], str | None] | None = None,
    instance: int = 0,
    ipv6: bool = False,
    prefix: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """Start one relay with the benchmark's options; yield it once it answers ``V``; stop it.

    ``probe`` replaces the readiness check (one ``V`` over UDP to ``control.port``);
    ``ipv6`` puts its media on ::1 (see ``RelaySpec.argv``); ``prefix`` runs the relay
    under another program (``valgrind ...``).
    pyrtpproxy runs with ``PYRTPPROXY_KERNEL_FORWARD=off`` unless the environment says
    otherwise: a relay uses the kernel path only when its command asks for it
    (``--kernel-forward``), so user-space figures stay user space when run as root.
    """
    pidfile = OUT_DIR / "run" / f"{spec.name}-{instance}.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    argv = spec.argv(control, port_lo, port_hi, pidfile, ipv6=ipv6)
    argv = [*prefix, *argv]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("wb") as lf:
        lf.write(("# " + shlex.join(argv) + "\n").encode())
        lf.flush()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal ^C reaches us; we stop it by PID
            preexec_fn=_raise_nofile,
            env={"PYRTPPROXY_KERNEL_FORWARD": "off", **os.environ},
        )  # fmt: skip
    _STARTED[proc.pid] = proc
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {proc.returncode} (see {logfile})")
            answer = probe() if probe is not None else control_query(control.port, "V")
            if answer == RTPPROXY_VERSION:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name} did not answer V within {ready_timeout}s")
            time.sleep(0.1)
        yield proc
    finally:
        _kill(proc)


@dataclass(frozen=True)
class Instance:
    """One started relay of a group: its process and control port."""

    proc: subprocess.Popen[bytes]
    ctl_port: int


@contextlib.contextmanager
def relay_group(
    spec: RelaySpec,
    args: argparse.Namespace,
    port_lo: int,
    port_hi: int,
    log_stem: str,
) -> Iterator[list[Instance]]:
    """``spec.instances`` relays side by side, as N systemd instances would run: instance i
    on UDP control port ``--ctl-port`` + i, with the i-th of N disjoint slices of the
    media port range, pinned to the i-th ``--relay-cpu`` (round robin), media on ::1
    with ``--ipv6``."""
    cpus = relay_cpus(args)
    span = (port_hi - port_lo) // spec.instances
    span -= span % 2
    with contextlib.ExitStack() as stack:
        group = []
        for i in range(spec.instances):
            lo = port_lo + i * span
            control = ControlSocket("udp", port=args.ctl_port + i)
            proc = stack.enter_context(
                relay_process(
                    spec, control, lo, lo + span - 2, None if cpus is None else cpus[i % len(cpus)],
                    OUT_DIR / "logs" / f"{log_stem}-i{i}.log", args.ready_timeout, instance=i,
                    ipv6=args.ipv6,
                )
            )  # fmt: skip
            group.append(Instance(proc, control.port))
        yield group


# --------------------------------------------------------------------------- control clients


class Client(Protocol):
    def ask(self, command: str) -> str | None:
        """Send one command and wait for its reply; None when none came in time."""
        ...

    def close(self) -> None: ...


class UnixClient:
    """``unix:`` as Kamailio speaks it: one connection per command, no newline, one read."""

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        self._timeout = timeout

    def ask(self, command: str) -> str | None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self._timeout)
            try:
                s.connect(self._path)
                s.sendall(command.encode())
                data = s.recv(65536)
            except OSError:
                return None
        return data.decode(errors="replace").strip() if data else None

    def close(self) -> None:
        pass


class UdpClient:
    """``udp:`` with a fresh cookie per command; a reply with another cookie is skipped.

    No retransmission: on loopback with one command outstanding per client nothing is
    lost, and a reply that does not come within the timeout counts as an error.
    """

    def __init__(self, port: int, timeout: float, tag: str) -> None:
        self._timeout = timeout
        self._tag = tag
        self._seq = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.connect(("127.0.0.1", port))
        self._sock.settimeout(timeout)

    def ask(self, command: str) -> str | None:
        self._seq += 1
        cookie = f"{self._tag}_{self._seq}"
        deadline = time.monotonic() + self._timeout
        try:
            self._sock.send(f"{cookie} {command}".encode())
            while True:
                text = self._sock.recv(65536).decode(errors="replace")
                if text.startswith(cookie + " "):
                    return text[len(cookie) + 1 :].strip()
                remaining = deadline - time.monotonic()  # a late reply to an earlier command
                if remaining <= 0:
                    return None
                self._sock.settimeout(remaining)
        except OSError:  # timeout, or ICMP port unreachable (nothing listening)
            return None
        finally:
            self._sock.settimeout(self._timeout)

    def close(self) -> None:
        self._sock.close()


def no_port(reply: str) -> bool:
    """A U/L reply that allocated nothing: its port is 0 or not a number."""
    first = reply.split(maxsplit=1)[0] if reply.split() else ""
    return not first.isdigit() or int(first) == 0
