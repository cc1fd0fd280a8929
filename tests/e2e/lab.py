"""Network-namespace lab for the end-to-end tests: phones behind NAT, Kamailio and
the relay on a "public" namespace.

    uac (192.0.2.2) -- nat1 (192.0.2.1 | 203.0.113.2) --+
                                                        pub: 203.0.113.1, 203.0.113.17,
    uas (192.0.2.18) -- nat2 (192.0.2.17 | 203.0.113.18)-+     service address 198.51.100.1
                                                               (Kamailio + relays)

The NAT routers masquerade to source ports 20000-29999, so every NAT-mapped port
differs from the phone's own port and the relay has to latch. Nothing is
created in the root namespace; everything is deleted at the end (and leftovers
of earlier runs, recognised by the name prefix, at the start).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "pyrtpe2e-"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KAMAILIO_CFG = REPO / "contrib" / "kamailio" / "kamailio.cfg"
SCENARIOS = HERE / "scenarios"
AGENT = HERE / "media_agent.py"
RTP_CTL = HERE / "rtp_ctl.py"

PUB_IP = "198.51.100.1"  # Kamailio and the relays
NAT1_PUB, NAT2_PUB = "203.0.113.2", "203.0.113.18"
UAC_IP, UAS_IP = "192.0.2.2", "192.0.2.18"
NAT_PORTS = (20000, 29999)
AGENT_CTL_PORT = 9999
SIP_PORT = 5060


def relay_command() -> list[str]:
    """The relay under test: $PYRTPPROXY_E2E_RELAY (a command line), default the
    repository's virtual-environment pyrtpproxy."""
    cmd = os.environ.get("PYRTPPROXY_E2E_RELAY")
    if cmd:
        return shlex.split(cmd)
    return [str(REPO / ".venv" / "bin" / "pyrtpproxy")]


def run(cmd: Sequence[str], timeout: float = 20, check: bool = True) -> str:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def cleanup_leftovers() -> None:
    """Delete namespaces (and the processes in them) left by earlier runs."""
    out = run(["ip", "netns", "list"], check=False)
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            delete_namespace(name)


def delete_namespace(name: str) -> None:
    pids = run(["ip", "netns", "pids", name], check=False).split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
                alive.append(pid)
        if not alive:
            break
        time.sleep(0.5)
        pids = run(["ip", "netns", "pids", name], check=False).split()
        if not pids:
            break
    run(["ip", "netns", "del", name], check=False)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Lab:
    workdir: Path
    ident: str = field(default_factory=lambda: secrets.token_hex(3))
    procs: list[Proc] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{PREFIX}{self.ident}-{role}"

    # ----- topology -----------------------------------------------------------
    def ip(self, role: str, *args: str) -> None:
        run(["ip", "-n", self.ns(role), *args])

    def exec_in(self, role: str, *cmd: str, timeout: float = 20, check: bool = True) -> str:
        return run(["ip", "netns", "exec", self.ns(role), *cmd], timeout=timeout, check=check)

    def veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        run(["ip", "-n", self.ns(a), "link", "add", a_if, "type", "veth",
             "peer", "name", b_if, "netns", self.ns(b)])  # fmt: skip
        self.ip(a, "link", "set", a_if, "up")
        self.ip(b, "link", "set", b_if, "up")

    def create(self) -> None:
        for role in ("pub", "nat1", "nat2", "uac", "uas"):
            run(["ip", "netns", "add", self.ns(role)])
            self.created.append(self.ns(role))
            self.ip(role, "link", "set", "lo", "up")
        # pub: service address on lo, one link per NAT router
        self.ip("pub", "addr", "add", f"{PUB_IP}/32", "dev", "lo")
        for n, (pub_side, nat_pub, lan, phone_ip, phone) in enumerate(
            (
                ("203.0.113.1/28", NAT1_PUB, "192.0.2.1/28", UAC_IP, "uac"),
                ("203.0.113.17/28", NAT2_PUB, "192.0.2.17/28", UAS_IP, "uas"),
            ),
            start=1,
        ):
            nat = f"nat{n}"
            self.veth("pub", f"to{nat}", nat, "wan")
            self.ip("pub", "addr", "add", pub_side, "dev", f"to{nat}")
            self.ip(nat, "addr", "add", f"{nat_pub}/28", "dev", "wan")
            self.ip(nat, "route", "add", "default", "via", pub_side.split("/")[0])
            self.veth(nat, "lan", phone, "eth0")
            self.ip(nat, "addr", "add", lan, "dev", "lan")
            self.ip(phone, "addr", "add", f"{phone_ip}/28", "dev", "eth0")
            self.ip(phone, "route", "add", "default", "via", lan.split("/")[0])
            self.exec_in(nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            lo, hi = NAT_PORTS
            ruleset = f"""
table ip e2enat {{
    counter to_mapped {{ }}
    chain pre {{
        type filter hook prerouting priority -300; policy accept;
        iifname "wan" ip saddr {PUB_IP} udp dport {lo}-{hi} counter name to_mapped
    }}
    chain post {{
        type nat hook postrouting priority 100; policy accept;
        oifname "wan" meta l4proto {{ tcp, udp }} masquerade to :{lo}-{hi} random
        oifname "wan" masquerade
    }}
}}
"""
            rules = self.workdir / f"{nat}.nft"
            rules.write_text(ruleset)
            self.exec_in(nat, "nft", "-f", str(rules))

    def nat_counter(self, nat: str) -> int:
        out = self.exec_in(nat, "nft", "-j", "list", "counter", "ip", "e2enat", "to_mapped")
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        return 0

    def destroy(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(3)
        for name in reversed(self.created):
            delete_namespace(name)
        self.created.clear()

    # ----- processes ------------------------------------------------------------
    def spawn(self, role: str, name: str, cmd: Sequence[str], cwd: Path | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        fh = log.open("ab")
        popen = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *cmd],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd or self.workdir,
            start_new_session=True,
        )
        fh.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_agents(self) -> None:
        for phone in ("uac", "uas"):
            (self.workdir / f"media-{phone}").mkdir(exist_ok=True)
            self.spawn(
                phone,
                f"agent-{phone}",
                [
                    sys.executable,
                    str(AGENT),
                    "serve",
                    str(AGENT_CTL_PORT),
                    str(self.workdir / f"media-{phone}"),
                ],
            )

    def media_results(self, phone: str) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for f in (self.workdir / f"media-{phone}").glob("*.json"):
            data = json.loads(f.read_text())
            out[str(data["id"])] = data
        return out

    def clear_media_results(self) -> None:
        for phone in ("uac", "uas"):
            for f in (self.workdir / f"media-{phone}").glob("*.json"):
                f.unlink()


def wait_for(predicate: object, timeout: float, what: str, interval: float = 0.1) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def tools_missing() -> list[str]:
    return [t for t in ("kamailio", "sipp", "nft", "ip") if shutil.which(t) is None]


@dataclass
class Relay:
    name: str
    sock: Path
    ctl_port: int
    proc: Proc | None = None


@dataclass
class CallRun:
    uac: Proc
    uas: Proc


class Stack:
    """Relays + Kamailio in the lab's pub namespace, the callee registered."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        relays: int = 1,
        ttl: int = 60,
        relay_flags: Sequence[str] = (),
    ) -> None:
        self.lab = lab
        self.relay_flags = list(relay_flags)
        self.dir = lab.workdir / name
        self.dir.mkdir()
        self.ttl = ttl
        self.relays = [
            Relay(f"{name}-relay{i}", self.dir / f"rtpp{i}.sock", 22220 + i) for i in range(relays)
        ]
        self.kamailio: Proc | None = None
        self.sipp_runs = 0

    # ----- relay ---------------------------------------------------------------
    def relay_args(self, i: int) -> list[str]:
        r = self.relays[i]
        lo = 35000 + i * 5000
        return [
            *relay_command(),
            "-f", "-F",
            "-s", f"unix:{r.sock}",
            "-s", f"udp:127.0.0.1:{r.ctl_port}",
            "-l", PUB_IP,
            "-m", str(lo), "-M", str(lo + 4999),
            "-T", str(self.ttl),
            "-n", f"tcp:{PUB_IP}:{SIP_PORT}",
            # a real pid file: the reference rtpproxy unlinks the -p file at exit,
            # so "-p /dev/null" as root deletes /dev/null
            "-p", str(self.dir / f"relay{i}.pid"),
            "-d", "INFO",
            *self.relay_flags,
        ]  # fmt: skip

    def start_relay(self, i: int) -> None:
        r = self.relays[i]
        with contextlib.suppress(FileNotFoundError):
            r.sock.unlink()
        r.proc = self.lab.spawn("pub", r.name, self.relay_args(i))
        proc = r.proc

        def up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"relay exited early: {proc.output()[-2000:]}")
            return r.sock.exists() and self.ctl(i, "V").strip() == "20040107"

        wait_for(up, 15, f"relay {i} control sockets")

    def stop_relay(self, i: int) -> None:
        r = self.relays[i]
        if r.proc is not None:
            r.proc.stop()

    def ctl(self, i: int, command: str) -> str:
        r = self.relays[i]
        return self.lab.exec_in(
            "pub", sys.executable, str(RTP_CTL), "127.0.0.1", str(r.ctl_port), *command.split(),
            timeout=10, check=False,
        )  # fmt: skip

    def counters(self, i: int, *names: str) -> dict[str, int]:
        reply = self.ctl(i, "G " + " ".join(names)).split()
        if len(reply) != len(names):
            raise AssertionError(f"unexpected G reply {reply!r}")
        return {n: int(float(v)) for n, v in zip(names, reply, strict=True)}

    def info(self, i: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.ctl(i, "I").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                with contextlib.suppress(ValueError):
                    out[k.strip()] = int(float(v))
        return out

    # ----- kamailio ------------------------------------------------------------
    def start_kamailio(self, extra_defines: Sequence[str] = ()) -> None:
        socks = " ".join(f"unix:{r.sock}=1" for r in self.relays)
        rundir = self.dir / "kamailio-run"
        rundir.mkdir(exist_ok=True)
        cmd = [
            "kamailio", "-DD", "-E",
            "-f", str(KAMAILIO_CFG),
            "-m", "48", "-M", "8",
            "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"), "-w", str(rundir),
            "-A", f"SIP_IP={PUB_IP}",
            "-A", f"SIP_PORT={SIP_PORT}",
            "-A", f'RTPP_SOCK="{socks}"',
            "-A", f'RTPP_NOTIFY="tcp:{PUB_IP}:{SIP_PORT}"',
            "-A", "RTPP_DISABLE_TOUT=5",
            # no keepalive OPTIONS: sipp's UAS would count one as a call
            "-A", "NATPING_INTERVAL=0",
            "-A", "WITH_DEBUG",
        ]  # fmt: skip
        for d in extra_defines:
            cmd += ["-A", d]
        self.kamailio = self.lab.spawn("pub", f"{self.dir.name}-kamailio", cmd)
        kam = self.kamailio

        def up() -> bool:
            if not kam.alive():
                raise RuntimeError(f"kamailio exited early: {kam.output()[-3000:]}")
            out = self.lab.exec_in("pub", "ss", "-Hlnt", check=False)
            return f"{PUB_IP}:{SIP_PORT}" in out

        wait_for(up, 20, "kamailio SIP listener")
        time.sleep(0.5)

    # ----- sipp ------------------------------------------------------------------
    def sipp(
        self,
        phone: str,
        scenario: str,
        calls: int = 1,
        rate: int = 10,
        pause_ms: int = 2000,
        media_ms: int = 0,
        timeout: int = 60,
        server: bool = False,
    ) -> Proc:
        self.sipp_runs += 1
        tag = f"{self.dir.name}-sipp{self.sipp_runs}-{phone}-{Path(scenario).stem}"
        local_ip = UAC_IP if phone == "uac" else UAS_IP
        agent = f"{sys.executable} {AGENT} ctl {AGENT_CTL_PORT}"
        cmd = ["sipp"]
        if not server:
            cmd.append(f"{PUB_IP}:{SIP_PORT}")
        cmd += [
            "-sf", str(SCENARIOS / scenario),
            "-i", local_ip, "-p", str(SIP_PORT),
            "-s", "uas",
            "-m", str(calls), "-l", str(calls), "-r", str(rate),
            "-d", str(pause_ms),
            "-key", "agent", agent,
            "-key", "media_ms", str(media_ms),
            "-timeout", str(timeout), "-timeout_error",
            "-nostdin", "-aa",
            "-trace_err", "-error_file", str(self.dir / f"{tag}-errors.log"),
            "-trace_msg", "-message_file", str(self.dir / f"{tag}-messages.log"),
            "-trace_logs", "-log_file", str(self.dir / f"{tag}-logs.log"),
        ]  # fmt: skip
        return self.lab.spawn(phone, tag, cmd, cwd=self.dir)

    def register_callee(self) -> None:
        proc = self.sipp("uas", "register.xml", timeout=10)
        rc = proc.wait(20)
        if rc != 0:
            raise AssertionError(f"REGISTER failed ({rc}):\n{self.sip_trace(proc)}")

    def sip_trace(self, proc: Proc) -> str:
        name = proc.name
        parts = [proc.output()[-3000:]]
        for suffix in ("errors", "messages"):
            f = self.dir / f"{name}-{suffix}.log"
            if f.exists():
                parts.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    def calls(
        self,
        calls: int = 1,
        rate: int = 10,
        pause_ms: int = 2000,
        uac_scenario: str = "uac.xml",
        media_ms: int = 0,
        timeout: int = 60,
    ) -> CallRun:
        uas = self.sipp(
            "uas", "uas.xml", calls=calls, media_ms=media_ms, timeout=timeout, server=True
        )
        time.sleep(0.3)
        uac = self.sipp(
            "uac",
            uac_scenario,
            calls=calls,
            rate=rate,
            pause_ms=pause_ms,
            media_ms=media_ms,
            timeout=timeout,
        )
        return CallRun(uac, uas)

    def start(self, **kamailio: Sequence[str]) -> None:
        for i in range(len(self.relays)):
            self.start_relay(i)
        self.start_kamailio(**kamailio)
        self.register_callee()

    def stop(self) -> None:
        if self.kamailio is not None:
            self.kamailio.stop()
        for i in range(len(self.relays)):
            self.stop_relay(i)
