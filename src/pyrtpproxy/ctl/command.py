"""The ``pyrtpproxy ctl`` command line: options, the ``sessions``/``top`` words, exit codes."""

from __future__ import annotations

import sys

import click

from ..config import ConfigError, ControlSpec, default_runtime_dir
from .client import DEFAULT_TIMEOUT, ControlClient, CtlError
from .sessions import fetch_sessions, render_sessions, sessions_json
from .top import MIN_INTERVAL, run_top


def default_spec() -> str:
    """The relay's own default control socket."""
    return f"unix:{default_runtime_dir()}/rtpproxy.sock"


EPILOG = """\b
Examples:
  pyrtpproxy ctl -s unix:/run/rtpproxy.sock V
  pyrtpproxy ctl -s udp:127.0.0.1:22222 Gv nsess_created npkts_relayed
  pyrtpproxy ctl -s unix:/run/rtpproxy.sock sessions
  pyrtpproxy ctl -s cunix:/run/rtpproxy.sock top
Exit status: 0 reply printed, 1 the relay answered E<n>, 2 usage, 3 no answer.
See docs/ctl.md and pyrtpproxy(8)."""


@click.command(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
        "max_content_width": 100,
    },
    epilog=EPILOG,
)
@click.option(
    "-s",
    "--control-socket",
    "spec",
    metavar="SPEC",
    default=None,
    help="Relay control socket: unix:, cunix:, udp:, udp6:, tcp:, tcp6: "
    "[default: the relay's default unix socket].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for a reply (UDP: all tries together).",
)
@click.option("--json", "as_json", is_flag=True, help="sessions: print the raw JSON list.")
@click.option(
    "--interval",
    type=click.FloatRange(min=MIN_INTERVAL),
    default=1.0,
    show_default=True,
    help="top: seconds between refreshes.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=0),
    default=0,
    help="top: stop after N frames (0: until q or Ctrl-C).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="sessions/top: list at most this many sessions.",
)
@click.argument("words", nargs=-1, type=click.UNPROCESSED, required=True)
def ctl_command(
    spec: str | None,
    timeout: float,
    as_json: bool,
    interval: float,
    iterations: int,
    limit: int,
    words: tuple[str, ...],
) -> None:
    """Send WORDS (one command) to a running relay and print the reply.

    WORDS is an rtpproxy command (V, VF 20040107, G, Gv nsess_created, I, Q call tag ...),
    or `sessions` (list live sessions) or `top` (live view of sessions and packet rates).
    """
    try:
        control = ControlSpec.parse(spec or default_spec())
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="-s") from None
    try:
        with ControlClient(control, timeout) as client:
            if words == ("sessions",):
                listing = fetch_sessions(client, limit)
                if as_json:
                    click.echo(sessions_json(listing))
                else:
                    click.echo("\n".join(render_sessions(listing)))
                return
            if words == ("top",):
                run_top(client, interval, iterations, limit)
                return
            reply = client.request(" ".join(words))
    except CtlError as exc:
        click.echo(f"pyrtpproxy ctl: {exc}", err=True)
        sys.exit(3)
    click.echo(reply)
    if reply.startswith("E") and reply[1:].isdigit():
        sys.exit(1)


_VALUE_OPTIONS = frozenset(
    {"-s", "--control-socket", "--timeout", "--interval", "--iterations", "--limit"}
)


def options_first(argv: list[str]) -> list[str]:
    """Let options follow ``sessions``/``top`` (``ctl sessions --json``): move the word
    last. Raw rtpproxy commands keep their words untouched."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv
        if arg in _VALUE_OPTIONS:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        if arg in ("sessions", "top"):
            return argv[:i] + argv[i + 1 :] + [arg]
        return argv
    return argv


def main(argv: list[str]) -> None:
    """``pyrtpproxy ctl ...`` (dispatched from :func:`pyrtpproxy.cli.main`)."""
    ctl_command.main(args=options_first(argv), prog_name="pyrtpproxy ctl")
