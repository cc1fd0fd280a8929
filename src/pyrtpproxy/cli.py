"""Command line: rtpproxy's short flags (so init scripts carry over) plus readable long ones."""

from __future__ import annotations

import grp
import os
import pwd
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import __version__
from .config import (
    Config,
    ConfigError,
    ControlSpec,
    KernelMode,
    build_address_plan,
    default_runtime_dir,
    parse_log_level,
)
from .engine.addresses import NotifyTarget
from .engine.latching import DEFAULT_WINDOW, Latching, LatchingPolicy
from .engine.overload import DEFAULT_THRESHOLD
from .protocol.capabilities import BASE_VERSION, CAPABILITIES

EPILOG = """\b
Examples:
  pyrtpproxy -f -l 203.0.113.10 -s unix:/run/rtpproxy.sock
  pyrtpproxy -f -l 10.0.0.1/203.0.113.10 -s udp:127.0.0.1:22222 -n tcp:127.0.0.1:9999
Control sockets (-s): unix:PATH, cunix:PATH, udp:ADDR[:PORT], udp6:ADDR[:PORT],
tcp:ADDR[:PORT], tcp6:ADDR[:PORT], stdio:, stdioc:, systemd: (UDP default port 22222,
'*' = all addresses). Signals: TERM/INT stop, HUP stops accepting new sessions and exits
when the last one ends. See pyrtpproxy(8)."""


def _print_capabilities(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"Basic version: {BASE_VERSION.decode()}")
    for cap in CAPABILITIES:
        if cap.supported:
            click.echo(f"Extension {cap.date.decode()}: {cap.description}")
    ctx.exit(0)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"pyrtpproxy {__version__}")
        ctx.exit(0)


def _print_clock(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo("CLOCK_MONOTONIC")
        ctx.exit(0)


def _resolve_user(spec: str) -> tuple[int, int | None]:
    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"unknown user {user!r}") from None
    if not group:
        return entry.pw_uid, None
    try:
        return entry.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"unknown group {group!r}") from None


def _parse_notify_targets(values: tuple[str, ...]) -> tuple[NotifyTarget, ...]:
    targets: list[NotifyTarget] = []
    for text in values:
        try:
            targets.append(NotifyTarget.parse(text))
        except ValueError as exc:
            raise ConfigError(f"-n {text}: {exc}") from None
    return tuple(targets)


def _latching(policy: str, window_ms: int | None) -> Latching:
    chosen = LatchingPolicy(policy)
    if window_ms is None:
        return Latching(chosen)
    if chosen is not LatchingPolicy.SAFE:
        raise ConfigError("--latching-window applies to --latching safe only")
    return Latching(chosen, window_ms / 1000)


def _parse_metrics_listen(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-listen wants HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parse_overload(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--overload_prot wants a load between 0 and 1, got {text!r}") from None


def build_config(opts: dict[str, Any]) -> Config:
    """Validate options into a :class:`Config` (raises :class:`ConfigError`).

    Only reads: directories and bind checks are the start-up's (:func:`pyrtpproxy.app.prepare`).
    """
    runtime = default_runtime_dir()
    sockets = opts["control"] or (f"unix:{runtime}/rtpproxy.sock",)
    control = tuple(ControlSpec.parse(s) for s in sockets)
    uses_runtime = not opts["control"] or opts["pidfile"] is None
    uid = gid = None
    if opts["user"]:
        uid, gid = _resolve_user(opts["user"])
    level, facility = parse_log_level(
        opts["log_level"] or ("DBUG" if opts["foreground"] else "WARN")
    )
    ttl = opts["ttl"]
    pidfile = opts["pidfile"] if opts["pidfile"] is not None else f"{runtime}/rtpproxy.pid"
    as_root = os.geteuid() == 0 and uid is None and not opts["no_root_check"]
    if as_root and any(s.kind.datagram for s in control):
        raise ConfigError(
            "running as root with a UDP control socket is insecure: use -u USER, or -F to override"
        )
    config = Config(
        control=control,
        addresses=build_address_plan(
            tuple(opts["listen"]), tuple(opts["listen6"]), opts["advertise"]
        ),
        port_min=opts["port_min"],
        port_max=opts["port_max"],
        ttl=ttl,
        setup_ttl=opts["setup_ttl"] if opts["setup_ttl"] is not None else ttl,
        independent_timers=opts["independent_timers"],
        tos=opts["tos"],
        notify_targets=_parse_notify_targets(tuple(opts["notify"])),
        foreground=opts["foreground"],
        pidfile=pidfile,
        user=opts["user"],
        uid=uid,
        gid=gid,
        socket_mode=int(opts["socket_mode"]) if opts["socket_mode"] is not None else None,
        nofile_limit=opts["nofile"],
        log_level=level,
        log_facility=facility,
        send_small_twice=opts["twice"],
        sequential_ports=opts["sequential"],
        sched_policy=opts["sched_policy"],
        nice=opts["nice"],
        force_asymmetric=opts["force_asymmetric"],
        bridge_symmetric=opts["bridge_symmetric"],
        latching=_latching(opts["latching"], opts["latching_window"]),
        record_dir=opts["record_dir"],
        spool_dir=opts["spool_dir"],
        pcap_record=opts["pcap_record"] or opts["record_both"],
        record_rtcp=not opts["no_rtcp_record"],
        record_all=opts["record_all"],
        record_both=opts["record_both"],
        no_chdir=opts["no_chdir"],
        no_redirect=opts["no_redirect"],
        metrics_listen=_parse_metrics_listen(opts["metrics_listen"]),
        resolve_interval=opts["resolve_interval"],
        kernel_forward=KernelMode(opts["kernel_forward"]),
        nft_table=opts["nft_table"],
        state_file=opts["state_file"],
        overload_threshold=_parse_overload(opts["overload_prot"]),
        runtime_dir=runtime if uses_runtime and runtime != "/var/run" else None,
    )
    config.validate()
    return config


_F = TypeVar("_F", bound=Callable[..., Any])


def _flag(*names: str, help: str) -> Callable[[_F], _F]:
    return click.option(*names, is_flag=True, default=False, help=help)


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
)
@_flag("-f", "--foreground", help="Stay in the foreground (default: daemonise).")
@_flag("-F", "no_root_check", help="Allow running as root with a UDP control socket.")
@click.option(
    "-s",
    "--control-socket",
    "control",
    multiple=True,
    metavar="SPEC",
    help="Control socket, repeatable [default: unix:/var/run/rtpproxy.sock as root, "
    "else $XDG_RUNTIME_DIR/pyrtpproxy/rtpproxy.sock].",
)
@click.option(
    "-l",
    "--listen",
    "listen",
    multiple=True,
    metavar="ADDR[/ADDR2]",
    help="IPv4 media address; a/b = bridge mode (internal/external); "
    "[label@]ADDR[=ADVERTISED]; repeatable with labels.",
)
@click.option(
    "-6",
    "--listen6",
    "listen6",
    multiple=True,
    metavar="ADDR[/ADDR2]",
    help="IPv6 media address(es), same syntax as -l.",
)
@click.option(
    "-A",
    "--advertise",
    "advertise",
    metavar="ADV[/ADV2]",
    help="Address(es) to put in replies instead of the bound one (1:1 NAT); a DNS name "
    "is resolved at start and every --resolve-interval seconds.",
)
@click.option(
    "--resolve-interval",
    "resolve_interval",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How often advertised DNS names (-A, -l ADDR=NAME) are looked up again; 0: never.",
)
@click.option(
    "-m",
    "--min-port",
    "port_min",
    type=int,
    default=35000,
    show_default=True,
    help="Lowest media port.",
)
@click.option(
    "-M",
    "--max-port",
    "port_max",
    type=int,
    default=65000,
    show_default=True,
    help="Highest media port.",
)
@click.option(
    "-T",
    "--ttl",
    "ttl",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Idle timeout of established sessions, seconds.",
)
@click.option(
    "-W",
    "--setup-ttl",
    "setup_ttl",
    type=click.IntRange(min=1),
    help="Timeout of incomplete sessions, seconds [default: -T].",
)
@_flag("-i", "independent_timers", help="Time each direction out on its own.")
@click.option(
    "-t",
    "--tos",
    "tos",
    type=int,
    default=0xB8,
    show_default=True,
    help="IP TOS of media packets (0..255).",
)
@click.option(
    "-n",
    "--notify",
    "notify",
    multiple=True,
    metavar="TARGET",
    help="Permitted timeout-notification target: unix:PATH, tcp:HOST:PORT, "
    "tcp:%%CC_SELF%%:PORT. Repeatable.",
)
@click.option(
    "-r",
    "--record-dir",
    "record_dir",
    metavar="DIR",
    help="Directory for finished recordings (R, C to a file, -a).",
)
@click.option(
    "-S",
    "--spool-dir",
    "spool_dir",
    metavar="DIR",
    help="Write recordings here; each is moved into -r DIR when it ends (same filesystem).",
)
@_flag("-R", "no_rtcp_record", help="Do not record or copy RTCP.")
@_flag("-P", "pcap_record", help="Record in pcap format (Wireshark reads it); Rs/Cs: one file.")
@_flag("-a", "record_all", help="Record both legs of every session from its creation.")
@_flag(
    "--record-both",
    "record_both",
    help="One R records both directions of the session into one pcap (implies -P).",
)
@click.option(
    "-p",
    "--pidfile",
    "pidfile",
    metavar="FILE",
    help="PID file; /dev/null for none [default: next to the default control socket].",
)
@click.option(
    "-u",
    "--user",
    "user",
    metavar="USER[:GROUP]",
    help="Drop privileges to USER; owner of the control socket.",
)
@click.option(
    "-w",
    "--socket-mode",
    "socket_mode",
    type=int,
    metavar="MODE",
    help="Control socket mode, as a decimal number (rtpproxy's convention).",
)
@click.option(
    "-L",
    "--nofile",
    "nofile",
    type=click.IntRange(min=1),
    metavar="N",
    help="Open-file limit (RLIMIT_NOFILE).",
)
@click.option(
    "-d",
    "--log-level",
    "log_level",
    metavar="LEVEL[:FACILITY]",
    help="DBUG, INFO, WARN, ERR or CRIT, with an optional syslog facility "
    "[default: DBUG in the foreground, WARN as a daemon].",
)
@_flag("-2", "twice", help="Send packets shorter than 128 bytes twice.")
@_flag("-b", "sequential", help="Allocate ports sequentially instead of at random.")
@click.option(
    "-c",
    "sched_policy",
    type=click.Choice(["fifo", "rr"]),
    help="Real-time scheduling policy, at the policy's highest priority (needs CAP_SYS_NICE).",
)
@_flag("-D", "no_chdir", help="Do not chdir to / when daemonising.")
@click.option(
    "-v",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_capabilities,
    help="Print the protocol capabilities and exit.",
)
@click.option(
    "-V",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit.",
)
@click.option(
    "-C",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_clock,
    help="Print the clock source and exit.",
)
@_flag("--force_asymmetric", "force_asymmetric", help="Make every session asymmetric.")
@_flag("--bridge_symmetric", "bridge_symmetric", help="Keep sessions symmetric in bridge mode.")
@click.option(
    "--latching",
    "latching",
    type=click.Choice([policy.value for policy in LatchingPolicy]),
    default=LatchingPolicy.SAFE.value,
    show_default=True,
    help="Whose packets a port relays: safe = the host the SIP proxy signalled at once, "
    "another host only after --latching-window without it (against RTP Bleed); "
    "rtpproxy = the first source wins, as the reference does.",
)
@click.option(
    "--latching-window",
    "latching_window",
    type=click.IntRange(min=0),
    metavar="MS",
    help=f"How long a source on another host than the signalled one waits, counted from "
    f"its first packet, before it may win (--latching safe) "
    f"[default: {DEFAULT_WINDOW * 1000:.0f}].",
)
@_flag("--no_resolve", "no_resolve", help="Numeric addresses only (always the case here).")
@_flag("--no_redirect", "no_redirect", help="Keep stdio open when daemonising.")
@click.option(
    "--nice",
    "nice",
    type=click.IntRange(-20, 20),
    help="Set the process's niceness (-20..20; lowering it needs CAP_SYS_NICE).",
)
@click.option(
    "--overload_prot",
    "overload_prot",
    is_flag=False,
    flag_value=str(DEFAULT_THRESHOLD),
    default=None,
    metavar="[LOAD]",
    help="Refuse new sessions (E98) while the event loop is busier than LOAD "
    f"(0..1, default {DEFAULT_THRESHOLD}); accept them again below LOAD - 0.05.",
)
@click.option(
    "--config", "config_file", metavar="FILE", help="Accepted for compatibility; ignored."
)
@click.option(
    "--dso", "dso", multiple=True, metavar="MODULE", help="Accepted for compatibility; ignored."
)
@click.option(
    "--metrics-listen",
    "metrics_listen",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics on HOST:PORT (off by default).",
)
@click.option(
    "--kernel-forward",
    "kernel_forward",
    type=click.Choice([mode.value for mode in KernelMode]),
    is_flag=False,
    flag_value=KernelMode.ON.value,
    default=KernelMode.AUTO.value,
    show_default=True,
    envvar="PYRTPPROXY_KERNEL_FORWARD",
    show_envvar=True,
    help="Let the kernel (nftables) relay settled streams: auto when the process has "
    "CAP_NET_ADMIN, on (or fail to start; the bare flag), off.",
)
@click.option(
    "--nft-table",
    "nft_table",
    metavar="NAME",
    help="The nftables table (family inet) the kernel path owns [default: pyrtpproxy_PID].",
)
@click.option(
    "--state-file",
    "state_file",
    metavar="PATH",
    help="Keep the sessions in this journal so that a restart or crash keeps the calls; "
    "a relay started while another runs with the same PATH takes over its sockets "
    "(off by default).",
)
def relay_command(**opts: Any) -> None:
    """pyrtpproxy: a media relay for VoIP, a drop-in replacement for rtpproxy.

    A SIP proxy (Kamailio, OpenSIPS, Sippy B2BUA) asks for a public port per call leg over
    a control socket; the relay learns each party's real address from its first packet and
    relays RTP and RTCP between them until the call is deleted or goes idle.
    """
    try:
        config = build_config(opts)
    except ConfigError as exc:
        click.echo(f"pyrtpproxy: {exc}", err=True)
        sys.exit(1)
    from .app import run

    try:
        sys.exit(run(config))
    except (ConfigError, OSError) as exc:
        click.echo(f"pyrtpproxy: {exc}", err=True)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``pyrtpproxy ctl ...`` talks to a running relay,
    ``pyrtpproxy extract ...`` turns recordings into WAV files, ``pyrtpproxy prompt ...``
    a WAV file into prompt files for ``P``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["ctl"]:
        from .ctl import main as ctl_main

        ctl_main(args[1:])
        return
    if args[:1] == ["extract"]:
        from .tools.extract import main as extract_main

        extract_main(args[1:])
        return
    if args[:1] == ["prompt"]:
        from .tools.prompt import main as prompt_main

        prompt_main(args[1:])
        return
    try:
        relay_command.main(args=args, prog_name="pyrtpproxy", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(0)
    except click.UsageError as exc:
        click.echo(exc.ctx.get_usage() if exc.ctx else "", err=True)
        click.echo(f"pyrtpproxy: {exc.format_message()}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
