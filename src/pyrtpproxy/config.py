"""The relay's configuration: a frozen dataclass built once from the command line."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from enum import Enum

from .engine.addresses import AddressPlan, LocalAddress, NotifyTarget
from .engine.latching import SAFE, Latching
from .engine.ports import port_range
from .media.kernel import check_table_name
from .names import is_name

DEFAULT_UDP_PORT = 22222
MAX_NOTIFY_TARGETS = 64
MAX_NOTIFY_WILDCARDS = 2  # tcp:%%CC_SELF%%:PORT targets, as in rtpproxy
MAX_LATCHING_WINDOW = 10.0  # seconds; longer only loses more of every NAT'ed call's start
LOG_LEVELS = {"DBUG": 10, "INFO": 20, "WARN": 30, "ERR": 40, "CRIT": 50}


class ConfigError(ValueError):
    """A bad option value; the CLI prints it on one line and exits with status 1."""


class KernelMode(Enum):
    """``--kernel-forward``: whether settled streams go through nftables."""

    AUTO = "auto"  # when the process may change nftables (CAP_NET_ADMIN), else user space
    ON = "on"  # or refuse to start
    OFF = "off"  # never touch nftables


class ControlKind(Enum):
    """Control socket transports (protocol.md §1)."""

    UNIX = "unix"
    CUNIX = "cunix"
    UDP = "udp"
    UDP6 = "udp6"
    TCP = "tcp"
    TCP6 = "tcp6"
    STDIO = "stdio"
    STDIOC = "stdioc"
    SYSTEMD = "systemd"

    @property
    def datagram(self) -> bool:
        """Cookie-framed datagrams (UDP) rather than a byte stream."""
        return self in (ControlKind.UDP, ControlKind.UDP6)

    @property
    def ipv6(self) -> bool:
        """Bound to an IPv6 address."""
        return self in (ControlKind.UDP6, ControlKind.TCP6)


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """One ``-s`` value."""

    kind: ControlKind
    path: str = ""  # unix kinds
    host: str = ""  # inet kinds; "" = all addresses
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> ControlSpec:
        """Parse ``unix:PATH``, bare ``PATH``, ``udp:ADDR[:PORT]``, ``stdio:`` and so on."""
        scheme, sep, rest = text.partition(":")
        try:
            kind = ControlKind(scheme.lower()) if sep else ControlKind.UNIX
        except ValueError:
            if "/" in text or not sep:
                kind, rest = ControlKind.UNIX, text
            else:
                raise ConfigError(f"unknown control socket type in {text!r}") from None
        if not sep:
            rest = text
        if kind in (ControlKind.UNIX, ControlKind.CUNIX):
            if not rest:
                raise ConfigError(f"control socket {text!r} has no path")
            if len(os.fsencode(rest)) >= 108:
                raise ConfigError(f"control socket path is too long: {rest}")
            return cls(kind, path=rest)
        if kind in (ControlKind.STDIO, ControlKind.STDIOC, ControlKind.SYSTEMD):
            return cls(kind)
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            host, port_text = rest, ""
        port = DEFAULT_UDP_PORT
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigError(f"bad port in control socket {text!r}")
            port = int(port_text)
        if host in ("*", ""):
            host = ""
        else:
            host = host.strip("[]")
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(f"bad address in control socket {text!r}") from None
            if (ip.version == 6) != kind.ipv6:
                raise ConfigError(f"address family does not match {scheme}: in {text!r}")
        return cls(kind, host=host, port=port)

    @property
    def bind_host(self) -> str:
        """What an inet control socket binds to: the address, or the family's wildcard."""
        return self.host or ("::" if self.kind.ipv6 else "0.0.0.0")

    def __str__(self) -> str:
        if self.kind in (ControlKind.UNIX, ControlKind.CUNIX):
            return f"{self.kind.value}:{self.path}"
        if self.kind in (ControlKind.STDIO, ControlKind.STDIOC, ControlKind.SYSTEMD):
            return f"{self.kind.value}:"
        return f"{self.kind.value}:{self.host or '*'}:{self.port}"


def _split_address(text: str, ipv6: bool) -> LocalAddress:
    """``[label@]ADDR[=ADV]`` → LocalAddress (numeric addresses only)."""
    label, at, rest = text.partition("@")
    if not at:
        label, rest = "", text
    host, eq, advertised = rest.partition("=")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"bad listen address {host!r}") from None
    if (ip.version == 6) != ipv6:
        flag = "-6" if ipv6 else "-l"
        raise ConfigError(f"{flag} wants an IPv{6 if ipv6 else 4} address, got {host}")
    if eq and not advertised:
        raise ConfigError(f"empty advertised address in {text!r}")
    wildcard = ip.is_unspecified
    return LocalAddress(
        "" if wildcard else ip.compressed,
        ipv6=ipv6,
        advertised=advertised or None,
        label=label or None,
    )


def build_address_plan(
    listen4: tuple[str, ...], listen6: tuple[str, ...], advertised: str | None
) -> AddressPlan:
    """Combine ``-l``, ``-6`` and ``-A`` (relay-behaviour.md §7).

    The first value of each flag may be ``addr1/addr2`` (bridge mode: internal/external);
    further values need a label (``label@addr``). ``-A adv[/adv2]`` advertises addresses
    for the first ``-l`` (or ``-6``) pair, in bridge mode and with a single address alike.
    """
    adv = tuple(a for a in advertised.split("/")) if advertised else ()
    ipv4: tuple[LocalAddress, ...] = ()
    ipv6: tuple[LocalAddress, ...] = ()
    labelled: list[LocalAddress] = []
    for values, is_v6 in ((listen4, False), (listen6, True)):
        for index, value in enumerate(values):
            if index == 0:
                parts = [_split_address(p, is_v6) for p in value.split("/") if p]
                if not parts or len(parts) > 2:
                    raise ConfigError(f"bad listen address {value!r}")
                if is_v6:
                    ipv6 = tuple(parts)
                else:
                    ipv4 = tuple(parts)
                labelled.extend(p for p in parts if p.label)
                continue
            extra = _split_address(value, is_v6)
            if extra.label is None:
                raise ConfigError(f"address label is missing in {value!r} (use label@addr)")
            labelled.append(extra)
    if not listen4 and not listen6:
        ipv4 = (LocalAddress(""),)
    first = ipv4 or ipv6
    if adv:
        if len(adv) != len(first):
            raise ConfigError(
                "-A needs one advertised address per listen address (a/b in bridge mode)"
            )
        with_adv = tuple(
            LocalAddress(loc.host, loc.ipv6, a or loc.advertised, loc.label)
            for loc, a in zip(first, adv, strict=True)
        )
        if ipv4:
            ipv4 = with_adv
        else:
            ipv6 = with_adv
    return AddressPlan(ipv4=ipv4, ipv6=ipv6, labelled=tuple(labelled))


def parse_log_level(text: str) -> tuple[int, str | None]:
    """``LEVEL[:FACILITY]`` → (logging level, syslog facility name or None)."""
    level, _, facility = text.partition(":")
    number = LOG_LEVELS.get(level.upper())
    if number is None:
        raise ConfigError(f"unknown log level {level!r} (DBUG, INFO, WARN, ERR, CRIT)")
    return number, (facility.upper() or None)


def default_runtime_dir() -> str:
    """Where the control socket and pid file go by default: rtpproxy's ``/var/run`` for
    root, a per-user runtime directory otherwise (so a plain user can start the relay)."""
    if os.geteuid() == 0:
        return "/var/run"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/pyrtpproxy-{os.geteuid()}"
    return base if base.startswith("/tmp/pyrtpproxy-") else os.path.join(base, "pyrtpproxy")


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the relay needs, validated."""

    control: tuple[ControlSpec, ...]
    addresses: AddressPlan = field(default_factory=AddressPlan)
    port_min: int = 35000
    port_max: int = 65000
    ttl: int = 60
    setup_ttl: int = 60
    independent_timers: bool = False
    tos: int = 0xB8
    notify_targets: tuple[NotifyTarget, ...] = ()
    foreground: bool = False
    pidfile: str | None = None
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    socket_mode: int | None = None
    nofile_limit: int | None = None
    sched_policy: str | None = None  # -c: "fifo" or "rr" (real-time), None: the default
    nice: int | None = None  # --nice: the niceness to set, None: leave it
    log_level: int = 10
    log_facility: str | None = None
    send_small_twice: bool = False
    sequential_ports: bool = False
    force_asymmetric: bool = False
    bridge_symmetric: bool = False
    latching: Latching = SAFE
    record_dir: str | None = None
    spool_dir: str | None = None
    pcap_record: bool = False
    record_rtcp: bool = True
    record_all: bool = False
    record_both: bool = False
    no_chdir: bool = False
    no_redirect: bool = False
    metrics_listen: tuple[str, int] | None = None
    resolve_interval: float = 60.0
    # the command line's default is auto; a Config made in code asks for the kernel itself
    kernel_forward: KernelMode = KernelMode.OFF
    nft_table: str | None = None  # None: pyrtpproxy_<pid>, the process's own
    state_file: str | None = None  # --state-file: the session journal (state.py)
    overload_threshold: float | None = None  # --overload_prot: event-loop busy share
    runtime_dir: str | None = None  # made (0700) at start-up: a default path lives in it

    @property
    def advertised_names(self) -> dict[str, bool]:
        """Advertised values that are DNS names (``-A``, ``-l ADDR=NAME``), each with
        whether it names an IPv6 address."""
        names: dict[str, bool] = {}
        for local in self.addresses.all():
            if local.advertised is not None and is_name(local.advertised):
                names[local.advertised] = local.ipv6
        return names

    @property
    def ports(self) -> range:
        """RTP ports in the configured range."""
        return port_range(self.port_min, self.port_max)

    def reserved_ports(self) -> tuple[int, ...]:
        """Media must not take a UDP control port (nor the port below it)."""
        ports: list[int] = []
        for spec in self.control:
            if spec.kind.datagram:
                ports += [spec.port, spec.port - 1]
        return tuple(ports)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for contradictory settings."""
        for name, value in (("-m", self.port_min), ("-M", self.port_max)):
            if not 1 <= value <= 65535:
                raise ConfigError(f"{name} must be between 1 and 65535, got {value}")
        if not self.ports:
            raise ConfigError(
                f"port range -m {self.port_min} -M {self.port_max} holds no RTP/RTCP pair"
            )
        if self.ttl < 1 or self.setup_ttl < 1:
            raise ConfigError("-T and -W must be at least 1")
        if not 0 <= self.tos <= 255:
            raise ConfigError(f"TOS must be between 0 and 255, got {self.tos}")
        if len(self.notify_targets) > MAX_NOTIFY_TARGETS:
            raise ConfigError(f"at most {MAX_NOTIFY_TARGETS} -n targets")
        if sum(t.wildcard for t in self.notify_targets) > MAX_NOTIFY_WILDCARDS:
            raise ConfigError(f"at most {MAX_NOTIFY_WILDCARDS} -n tcp:%%CC_SELF%%:PORT targets")
        stdio = [s for s in self.control if s.kind in (ControlKind.STDIO, ControlKind.STDIOC)]
        if stdio and not self.foreground:
            raise ConfigError("stdio command mode requires -f switch")
        if len(stdio) > 1:
            raise ConfigError("only one stdio control socket is possible")
        if not 0 <= self.latching.window <= MAX_LATCHING_WINDOW:
            raise ConfigError(
                f"--latching-window must be between 0 and {MAX_LATCHING_WINDOW * 1000:.0f} ms"
            )
        if self.record_both and not self.record_dir:
            raise ConfigError("--record-both requires -r")
        if self.spool_dir and not self.record_dir:
            raise ConfigError("-S requires -r")
        if self.socket_mode is not None and not 0 <= self.socket_mode <= 4095:
            raise ConfigError("-w must be between 0 and 4095")
        if self.kernel_forward is KernelMode.ON and self.uid is not None:
            raise ConfigError(
                "--kernel-forward on changes nftables for the whole run; it cannot drop to "
                "-u USER (grant the user CAP_NET_ADMIN instead, or use auto)"
            )
        if self.overload_threshold is not None and not 0 < self.overload_threshold <= 1:
            raise ConfigError(
                f"--overload_prot wants a load between 0 and 1, got {self.overload_threshold}"
            )
        if self.nft_table is not None:
            try:
                check_table_name(self.nft_table)
            except ValueError as exc:
                raise ConfigError(f"--nft-table: {exc}") from None
