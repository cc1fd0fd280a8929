"""``pyrtpproxy ctl``: talk to a running relay over any control transport (docs/ctl.md).

``pyrtpproxy ctl -s SPEC COMMAND...`` sends one rtpproxy command and prints the reply;
``sessions`` lists live sessions through the ``Zsessions`` extension and ``top`` keeps
refreshing that list with packet rates. Works against rtpproxy too, except for the
extension (rtpproxy answers ``E0``, which is reported as "not supported").
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import click

from .config import ConfigError, ControlKind, ControlSpec, default_runtime_dir
from .net import family_of

DEFAULT_TIMEOUT = 2.0
UDP_RETRIES = 3  # retransmissions after the first datagram, same cookie (like the SIP proxies)
MAX_REPLY = 65536
SESSIONS_WORD = "Zsessions"
MAX_SESSIONS = 100_000  # stop paging after this many (a bound, not a real limit)
MIN_INTERVAL = 0.2


class CtlError(Exception):
    """Cannot reach the relay or understand its answer."""


class NotSupported(CtlError):
    """The relay answered ``E0`` to the extension (rtpproxy, or an old pyrtpproxy)."""


def _udp_target(spec: ControlSpec) -> tuple[str, int]:
    if spec.host:
        return spec.host, spec.port
    return ("::1" if spec.kind.ipv6 else "127.0.0.1"), spec.port


def _expected_lines(command: str) -> int:
    """Lines in the reply to ``command`` on a stream transport (``I`` is multi-line)."""
    word = command.split(None, 1)[0] if command.strip() else ""
    if word[:1] in ("I", "i"):
        return 6 if "l" in word[1:].lower() else 5
    return 1


class ControlClient:
    """One relay's control socket; persistent for ``cunix:``/``tcp:``, per request
    for ``unix:``, cookie and retransmission for ``udp:``."""

    def __init__(self, spec: ControlSpec, timeout: float = DEFAULT_TIMEOUT) -> None:
        if spec.kind in (ControlKind.STDIO, ControlKind.STDIOC, ControlKind.SYSTEMD):
            raise CtlError(f"cannot connect to {spec}: give the socket's address instead")
        self.spec = spec
        self.timeout = timeout
        self._stream: socket.socket | None = None
        self._pending = b""

    def close(self) -> None:
        """Close a persistent connection."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._pending = b""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, command: str) -> str:
        """Send ``command`` and return the reply without its final newline."""
        data = command.strip().encode("utf-8", "surrogateescape")
        kind = self.spec.kind
        try:
            if kind is ControlKind.UNIX:
                reply = self._one_shot(data)
            elif kind.datagram:
                reply = self._datagram(data)
            else:
                reply = self._line(data, _expected_lines(command))
        except OSError as exc:
            self.close()
            raise CtlError(f"{self.spec}: {exc.strerror or exc}") from None
        return reply.decode("utf-8", "replace").rstrip("\n")

    def _one_shot(self, data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.spec.path)
            sock.sendall(data)  # no newline, no shutdown: like Kamailio and OpenSIPS
            chunks: list[bytes] = []
            while sum(len(c) for c in chunks) < MAX_REPLY:
                chunk = sock.recv(MAX_REPLY)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)

    def _connect_stream(self) -> socket.socket:
        if self._stream is not None:
            return self._stream
        kind = self.spec.kind
        if kind is ControlKind.CUNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = self.spec.path
        else:
            target = _udp_target(self.spec)
            sock = socket.socket(family_of(target[0]), socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        self._stream = sock
        return sock

    def _line(self, data: bytes, lines: int) -> bytes:
        sock = self._connect_stream()
        sock.sendall(data + b"\n")
        buffer = self._pending
        got: list[bytes] = []
        deadline = time.monotonic() + self.timeout
        while len(got) < lines:
            end = buffer.find(b"\n")
            if end >= 0:
                line, buffer = buffer[:end], buffer[end + 1 :]
                got.append(line)
                if len(got) == 1 and line.startswith(b"E"):
                    break  # an error is always one line
                continue
            if time.monotonic() > deadline or len(buffer) > MAX_REPLY:
                raise CtlError(f"{self.spec}: no complete reply")
            chunk = sock.recv(MAX_REPLY)
            if not chunk:
                raise CtlError(f"{self.spec}: connection closed by the relay")
            buffer += chunk
        self._pending = buffer
        return b"\n".join(got)

    def _datagram(self, data: bytes) -> bytes:
        cookie = secrets.token_hex(6).encode()
        packet = cookie + b" " + data
        target = _udp_target(self.spec)
        wait = self.timeout / (UDP_RETRIES + 1)
        with socket.socket(family_of(target[0]), socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            for _attempt in range(UDP_RETRIES + 1):
                sock.send(packet)
                deadline = time.monotonic() + wait
                while (left := deadline - time.monotonic()) > 0:
                    ready, _, _ = select.select([sock], [], [], left)
                    if not ready:
                        break
                    try:
                        reply = sock.recv(MAX_REPLY)
                    except ConnectionRefusedError:
                        raise CtlError(f"{self.spec}: nothing listens there") from None
                    word, _, body = reply.partition(b" ")
                    if word == cookie:
                        return body
        raise CtlError(f"{self.spec}: no reply after {UDP_RETRIES + 1} tries")


# --- the sessions extension -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionList:
    """Every live session the relay reported, plus its timer settings."""

    sessions: list[dict[str, Any]]
    total: int
    ttl: int


def fetch_sessions(client: ControlClient, limit: int = MAX_SESSIONS) -> SessionList:
    """Page through ``Zsessions`` until the relay says there is no more (or ``limit``)."""
    sessions: list[dict[str, Any]] = []
    offset: int | None = 0
    total, ttl = 0, 0
    pages = 0
    while offset is not None and len(sessions) < limit and pages < limit:
        reply = client.request(f"{SESSIONS_WORD} {offset}")
        pages += 1
        if not reply.startswith("{"):
            if reply.strip() == "E0":
                raise NotSupported("the relay does not support session listing (E0)")
            raise CtlError(f"unexpected reply to {SESSIONS_WORD}: {reply[:80]!r}")
        page = json.loads(reply)
        sessions.extend(page["sessions"])
        total, ttl = int(page["total"]), int(page["ttl"])
        next_offset = page.get("next")
        offset = int(next_offset) if next_offset is not None and next_offset > offset else None
    return SessionList(sessions[:limit], total, ttl)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _party(leg: dict[str, Any]) -> str:
    remote = leg.get("remote")
    if not remote:
        return "-"
    return str(remote) + ("" if leg.get("latched") else "?")


SESSION_HEADER = (
    f"{'CALL-ID':<24} {'TAG':<12} {'PORTS':<11} {'FROM PARTY':<22} {'TO PARTY':<22} "
    f"{'PKTS>':>8} {'PKTS<':>8} {'IDLE':>5}"
)


def format_session(item: dict[str, Any], rates: tuple[float, float] | None = None) -> str:
    """One line: call-id, tag, our ports, latched addresses, packets each way, idle."""
    frm, to = item["from"], item["to"]
    ports = f"{frm['port']}/{to['port']}"
    if rates is None:
        out, back = str(frm["rtp_in"]), str(to["rtp_in"])
    else:
        out, back = f"{rates[0]:.0f}/s", f"{rates[1]:.0f}/s"
    return (
        f"{_cut(item['call_id'], 24):<24} {_cut(item['tag'], 12):<12} {ports:<11} "
        f"{_cut(_party(frm), 22):<22} {_cut(_party(to), 22):<22} "
        f"{out:>8} {back:>8} {item['idle']:>4}s"
    )


def render_sessions(listing: SessionList) -> list[str]:
    """The ``sessions`` table."""
    lines = [SESSION_HEADER]
    lines.extend(format_session(item) for item in listing.sessions)
    lines.append(
        f"{listing.total} session(s). PORTS: from-party's/to-party's relay port; "
        "PKTS>: RTP from the from-party, PKTS<: from the to-party; '?' = not latched yet."
    )
    return lines


# --- top ------------------------------------------------------------------------------

TOP_COUNTERS = ("nsess_created", "nsess_timeout", "npkts_rcvd", "npkts_relayed", "npkts_discard")


def _global_counters(client: ControlClient) -> dict[str, float]:
    reply = client.request("Gv " + " ".join(TOP_COUNTERS))
    values: dict[str, float] = {}
    for part in reply.split():
        name, eq, value = part.partition("=")
        if eq:
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


class TopView:
    """State between frames: previous counters, to turn them into rates."""

    def __init__(self) -> None:
        self._previous_at: float | None = None
        self._previous_globals: dict[str, float] = {}
        self._previous: dict[tuple[str, str], tuple[int, int]] = {}

    def frame(self, listing: SessionList, globals_: dict[str, float], height: int) -> list[str]:
        """Lines of one screen; sessions sorted by packet rate, busiest first."""
        now = time.monotonic()
        dt = (now - self._previous_at) if self._previous_at is not None else 0.0
        rates: dict[tuple[str, str], tuple[float, float]] = {}
        current: dict[tuple[str, str], tuple[int, int]] = {}
        for item in listing.sessions:
            key = (item["call_id"], item["tag"])
            counts = (int(item["from"]["rtp_in"]), int(item["to"]["rtp_in"]))
            current[key] = counts
            before = self._previous.get(key)
            if dt > 0 and before is not None:
                rates[key] = (
                    max(0, counts[0] - before[0]) / dt,
                    max(0, counts[1] - before[1]) / dt,
                )
            else:
                rates[key] = (0.0, 0.0)

        def pps(name: str) -> str:
            if dt <= 0 or name not in self._previous_globals or name not in globals_:
                return "-"
            return f"{max(0.0, globals_[name] - self._previous_globals[name]) / dt:.0f}"

        lines = [
            f"pyrtpproxy top - {time.strftime('%H:%M:%S')}   sessions: {listing.total}   "
            f"created: {globals_.get('nsess_created', 0):.0f}   "
            f"timed out: {globals_.get('nsess_timeout', 0):.0f}",
            f"packets/s  received: {pps('npkts_rcvd')}   relayed: {pps('npkts_relayed')}   "
            f"discarded: {pps('npkts_discard')}        (q or Ctrl-C quits)",
            "",
            SESSION_HEADER,
        ]
        ordered = sorted(listing.sessions, key=lambda i: -sum(rates[(i["call_id"], i["tag"])]))
        room = max(1, height - len(lines) - 1)
        for item in ordered[:room]:
            lines.append(format_session(item, rates[(item["call_id"], item["tag"])]))
        if len(ordered) > room:
            lines.append(f"... {len(ordered) - room} more")
        self._previous_at = now
        self._previous_globals = globals_
        self._previous = current
        return lines


@contextlib.contextmanager
def _cbreak(stream: TextIO) -> Iterator[bool]:
    """Single-key input on a terminal; yields whether keys can be read."""
    if not stream.isatty():
        yield False
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(interval: float, keys: bool) -> bool:
    """Sleep ``interval``; True if 'q' was pressed meanwhile."""
    if not keys:
        time.sleep(interval)
        return False
    deadline = time.monotonic() + interval
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready:
            key = os.read(sys.stdin.fileno(), 1)
            if key in (b"q", b"Q", b"\x03", b""):
                return True
    return False


def run_top(client: ControlClient, interval: float, iterations: int, limit: int) -> None:
    """Refresh until 'q', Ctrl-C or ``iterations`` frames (0 = no limit)."""
    view = TopView()
    ansi = sys.stdout.isatty()
    frames = 0
    with _cbreak(sys.stdin) as keys:
        try:
            while True:
                listing = fetch_sessions(client, limit)
                globals_ = _global_counters(client)
                height = shutil.get_terminal_size((120, 40)).lines if ansi else 10_000
                lines = view.frame(listing, globals_, height)
                if ansi:
                    sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
                else:
                    sys.stdout.write("\n".join(lines) + "\n\n")
                sys.stdout.flush()
                frames += 1
                if iterations and frames >= iterations:
                    break
                if _wait_for_quit(interval, keys):
                    break
        except KeyboardInterrupt:
            pass


# --- command line ---------------------------------------------------------------------


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
                    click.echo(json.dumps(listing.sessions, indent=1))
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


def _options_first(argv: list[str]) -> list[str]:
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
    ctl_command.main(args=_options_first(argv), prog_name="pyrtpproxy ctl")
