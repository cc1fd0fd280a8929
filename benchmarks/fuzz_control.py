#!/usr/bin/env python3
"""Bounded fuzzer of the rtpproxy control protocol (see benchmarks/README.md).

Starts a relay (pyrtpproxy from this checkout unless ``--relay`` says otherwise) with a
``unix:``, ``cunix:``, ``udp:`` and ``tcp:`` control socket, creates a few *victim* calls
that carry real RTP, then sends ``--count`` commands: half from a grammar of every command
(valid and invalid arguments, modifiers, ``&&`` chains), half mutated from the command
shapes Kamailio, OpenSIPS and Sippy B2BUA send (byte flips, truncation, token swaps, huge
numbers, overlong lines, NULs, non-UTF-8 bytes, ``&&`` chains, odd and repeated UDP
cookies). After every batch it checks that the relay is alive and answers ``V`` on every
socket within a deadline, and that every victim still relays RTP both ways with ``Q``
counters that only grow. Every reply is checked against the reply forms of the protocol
(port replies, ``E<n>`` with a known code, ``0``/``1``, numbers, Q/G/I text, ``&&``
results); a repeated UDP cookie must bring back the first reply byte for byte.

Commands come from ``random.Random(seed)``, not hypothesis' engine: a million commands
must take minutes, and a seed reproduces a run exactly. (Hypothesis drives the same
vocabulary and :func:`check_reply` through the command processor in-process, in
tests/control/test_fuzz_properties.py.) ``X`` (delete every session) is
never sent, so that the victims survive; everything else is.

Example:
    flock /tmp/pyrtpproxy-bench.lock nice -n 10 .venv/bin/python benchmarks/fuzz_control.py \\
        --count 1000000 --transport all --seed 1 --time-limit 3600
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import random
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from relays import machine_facts

VERSION = b"20040107"
TRANSPORTS = ("unix", "cunix", "udp", "tcp")
SEPARATORS = re.compile(rb"[ \t\r\n]+")
MAX_COMMAND = 8191  # what one unix: read or one datagram is cut to
MAX_LINE = 8192  # a cunix:/tcp: line longer than this drops the connection
MAX_REPLY = 1024
OVERLONG = 9000  # overlong lines are made at least this long, well past MAX_LINE
STREAM_CHUNK = 64  # lines per write on a persistent connection
UDP_WINDOW = 48  # datagrams outstanding at once
UDP_BYTES_IN_FLIGHT = 64 * 1024  # and their bytes (the relay's socket buffer is ~200 KiB)
REPLY_DEADLINE = 5.0  # seconds for any one reply
LIVENESS_DEADLINE = 2.0  # seconds for V after each batch
UDP_RETRY = 0.5  # a datagram (or its reply) lost on loopback is sent again with its cookie
MEDIA_SPRAY = 64  # packets at random media ports after each batch
COOKIE_TTL = 30.0  # a repeated cookie younger than this must bring back the first reply
# error-codes.md: every code the protocol has
ERROR_CODES = frozenset(
    [
        0,
        1,
        2,
        3,
        *range(5, 20),
        25,
        26,
        31,
        32,
        35,
        36,
        37,
        50,
        60,
        62,
        65,
        68,
        71,
        72,
        75,
        *range(81, 90),
        98,
        99,
    ]
)
INTERNAL_ERROR = 89  # a relay bug caught by its own last-resort handler


# --------------------------------------------------------------------------- commands

CALL_IDS = [
    *(b"fz%d" % i for i in range(10)),
    b"\xff\xfe\x80call",
    b"*3:R9//u@-JojSdZ\\`-KJ!?we",
    b"fz1;1",
    b"fz-0",
]
TAGS = [b"t0", b"t1", b"t2", b"t0;1", b"t1;1", b"t2;2", b"t\xc3\x28", b"t0;"]
ADDRESSES = [b"127.0.0.1"] * 6 + [
    b"0.0.0.0",
    b"::1",
    b"1.2.3",
    b"1.2.3.456",
    b"localhost",
    b"127.0.0.1.127.0.0.1",
    b"[::1]",
    b"fe80::1",
    b"10.0.0.1",
    b"255.255.255.255",
]
PORTS = [
    b"5000",
    b"5002",
    b"40000",
    b"0",
    b"65535",
    b"65536",
    b"99999",
    b"-1",
    b"abc",
    b"1" + b"0" * 30,
    b"4294967296",
    b"+5",
    b"0x10",
]
UL_MODIFIERS = [
    b"",
    b"",
    b"a",
    b"s",
    b"w",
    b"i",
    b"e",
    b"ie",
    b"6",
    b"z20",
    b"z0",
    b"z1000",
    b"z",
    b"c0,8,101",
    b"c",
    b"c0c8",
    b"l127.0.0.1",
    b"l",
    b"l[::1]",
    b"l{lab}",
    b"r127.0.0.1",
    b"r",
    b"r10.0.0.1z20",
    b"n",
    b"x",
    b"garbage",
    b"Z20",
    b"A",
    b"IE",
    b"t5",
]
NOTIFY = [b"notify.sock", b"unix:notify.sock", b"tcp:127.0.0.1:9", b"%%CC_SELF%%:9", b"x"]
NOTIFY_TAGS = [b"T123", b"I", b"%25%25X", b"%%bad", b"%2", b"a%41b"]
COPY_TARGETS = [
    b"udp:127.0.0.1:9",
    b"udp:[::1]:9",
    b"udp:127.0.0.1",
    b"udp:",
    b"udp:nonsense.invalid:5",
    b"rec.a",
    b"../escape",
    b"",
]
COUNTER_NAMES = [
    b"ttl",
    b"npkts_ina",
    b"npkts_ino",
    b"nrelayed",
    b"ndropped",
    b"rtpa_nsent",
    b"rtpa_jmax",
    b"longest_ipi",
    b"nsess_created",
    b"npkts_rcvd",
    b"bogus",
]
SUBCOMMANDS = [
    b"D",
    b"Dw",
    b"L 127.0.0.1 5002",
    b"L6 ::1 5",
    b"S ttl=5",
    b"Sr tos=16",
    b"S ttl=x",
    b"M3:1 Ddtmf",
    b"C udp:127.0.0.1:9",
    b"Q",
    b"",
]
LETTERS = b"UuLlDdPpSsRrCcNnVvIiQqGgZzAB?0 "


def client_shapes(cid: bytes, ft: bytes, tt: bytes) -> list[bytes]:
    """What Kamailio, OpenSIPS and Sippy B2BUA send (tests/clients, spec/clients.md)."""
    return [
        b"V",
        b"VF 20050322",
        b"VF 20071116",
        b"VF 20081102",
        b"VF 20170313",
        b"Uc0,8,101 %s 127.0.0.1 5000 %s;1" % (cid, ft),
        b"UAIEc0,8 %s 127.0.0.1 5000 %s;1 %s;1" % (cid, ft, tt),
        b"U %s 127.0.0.1 5000 %s;1 %s;1 notify.sock" % (cid, ft, tt),
        b"Lc0,8 %s 127.0.0.1 5002 %s;1 %s;1" % (cid, ft, tt),
        b"U %s 127.0.0.1 5000 %s;1 %s;1 notify.sock T123 && M3:1 Ddtmf" % (cid, ft, tt),
        b"D %s %s %s" % (cid, ft, tt),
        b"D %s %s" % (cid, ft),
        b"R %s %s %s" % (cid, ft, tt),
        b"P1 %s /abs/welcome session %s;1 %s;1" % (cid, ft, tt),
        b"P-1 %s /abs/welcome session %s;1" % (cid, ft),
        b"S %s %s;1 %s;1" % (cid, ft, tt),
        b"Q %s %s;1 %s" % (cid, ft, tt),
        b"Qv %s %s;1 %s;1 ttl npkts_ina npkts_ino rtpa_nlost rtpa_jmax" % (cid, ft, tt),
        b"C %s udp:127.0.0.1:9 %s;1 %s;1" % (cid, ft, tt),
        b"N %s %s;1 %s;1" % (cid, ft, tt),
        b"G",
        b"Gv nsess_created nsess_destroyed npkts_rcvd",
        b"Ib",
        b"Il",
        b"U6z20 %s-0 ::1 5000 %s %s notify.sock %%2Ftag" % (cid, ft, tt),
        b"Ur127.0.0.1 %s-1 127.0.0.1 5000 %s" % (cid, ft),
        b"Un %s-0 127.0.0.1 5004 %s %s" % (cid, ft, tt),
        b"Cp %s-0 udp:127.0.0.1:9 %s %s" % (cid, ft, tt),
        b"Rs %s-0 %s %s" % (cid, ft, tt),
        b"Q %s-0 %s %s && D" % (cid, ft, tt),
        b"U %s 127.0.0.1 5000 %s && L 127.0.0.1 5002" % (cid, ft),
        b"Zsessions 0 5",
    ]


class Commands:
    """Command bytes from a grammar of the protocol or mutated from real clients' shapes.

    ``stream`` limits ordinary lines to what a cunix:/tcp: connection can carry and never
    puts a newline inside a command (:meth:`overlong` makes the one kind of line that
    does not fit, on purpose).
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, items: list[bytes]) -> bytes:
        return items[self.rng.randrange(len(items))]

    def next(self) -> bytes:
        return self.grammar() if self.rng.random() < 0.5 else self.mutated()

    # grammar ------------------------------------------------------------------------

    def grammar(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(100)
        cid, ft, tt = self.pick(CALL_IDS), self.pick(TAGS), self.pick(TAGS)
        if kind < 30:
            letter = b"U" if kind < 20 else b"L"
            mods = b"".join(self.pick(UL_MODIFIERS) for _ in range(rng.randrange(3)))
            args = [cid, self.pick(ADDRESSES), self.pick(PORTS), ft]
            if rng.random() < 0.6:
                args.append(tt)
            if rng.random() < 0.1:
                args += [self.pick(NOTIFY), self.pick(NOTIFY_TAGS)]
            words = [letter + mods, *args]
            for _ in range(rng.choice((0, 0, 0, 1, 2, 16))):
                words += [b"&&", self.pick(SUBCOMMANDS)]
        elif kind < 45:
            mod = self.pick([b"", b"", b"w", b"x", b"garbage"])
            words = [b"D" + mod, cid, ft] + ([tt] if rng.random() < 0.5 else [])
        elif kind < 55:
            mod = self.pick([b"", b"v", b"g", b"vx"])
            words = [b"Q" + mod, cid, ft, tt]
            words += [self.pick(COUNTER_NAMES) for _ in range(rng.randrange(4))]
            if rng.random() < 0.1:
                words += [b"&&", self.pick([b"D", b"S ttl=3", b"L 127.0.0.1 5"])]
        elif kind < 62:
            letter = self.pick([b"R", b"Rs", b"Rp", b"Rx", b"N", b"Na", b"Nax", b"S", b"Sx"])
            words = [letter, cid, ft] + ([tt] if rng.random() < 0.5 else [])
        elif kind < 68:
            mod = self.pick([b"", b"s", b"p", b"sp", b"x", b"P"])
            words = [b"C" + mod, cid, self.pick(COPY_TARGETS), ft, tt]
        elif kind < 72:
            count = self.pick([b"", b"1", b"0", b"-1", b"garbage", b"99999999999"])
            codecs = self.pick([b"session", b"0,8", b"", b"x"])
            words = [b"P" + count, cid, b"/nonexistent/prompt", codecs, ft, tt]
        elif kind < 80:
            words = [self.pick([b"V", b"VF", b"Vf", b"vf", b"Vx", b"VFx", b"v"])]
            if rng.random() < 0.7:
                words.append(self.pick([b"20040107", b"20050322", b"20081224", b"0", b"x"]))
        elif kind < 86:
            words = [self.pick([b"I", b"Ib", b"Il", b"Ibl", b"Ix", b"i"])]
            words += [b"x"] * (rng.random() < 0.1)
        elif kind < 93:
            words = [self.pick([b"G", b"Gv", b"Gx", b"g"])]
            words += [self.pick(COUNTER_NAMES) for _ in range(rng.randrange(6))]
        elif kind < 95:
            words = [b"Zsessions"] + [self.pick([b"0", b"3", b"1000000", b"x"])] * rng.randrange(3)
        else:
            words = [bytes([self.pick([bytes([c]) for c in LETTERS])[0]])]
            words += [self.pick(CALL_IDS) for _ in range(rng.randrange(26))]
        return b" ".join(words)

    # mutations ----------------------------------------------------------------------

    def mutated(self) -> bytes:
        rng = self.rng
        shape = self.pick(client_shapes(self.pick(CALL_IDS), self.pick(TAGS), self.pick(TAGS)))
        data = bytearray(shape)
        for _ in range(rng.randrange(1, 4)):
            data = self._mutate(data)
        return bytes(data)

    def _mutate(self, data: bytearray) -> bytearray:
        rng = self.rng
        how = rng.randrange(13)
        if not data:
            return bytearray(b"\x00" if how & 1 else b"")
        pos = rng.randrange(len(data))
        if how == 0:  # flip a bit
            data[pos] ^= 1 << rng.randrange(8)
        elif how == 1:  # a random byte
            data[pos] = rng.randrange(256)
        elif how == 2:  # truncate
            del data[pos:]
        elif how == 3:  # insert a NUL
            data[pos:pos] = b"\x00"
        elif how == 4:  # insert non-UTF-8 bytes
            data[pos:pos] = self.pick([b"\xff", b"\xc3\x28", b"\x80\x80", b"\xed\xa0\x80"])
        elif how in (5, 6, 7):
            tokens = data.split(b" ")
            i, j = rng.randrange(len(tokens)), rng.randrange(len(tokens))
            if how == 5:  # swap two tokens
                tokens[i], tokens[j] = tokens[j], tokens[i]
            elif how == 6:  # drop or repeat one
                if rng.random() < 0.5:
                    del tokens[i]
                else:
                    tokens.insert(i, tokens[i])
            else:  # a huge number where a number was
                digits = rng.choice((10, 20, 40, 400))
                tokens[i] = bytes(str(rng.choice((1, -1)) * 10**digits), "ascii")
            data = bytearray(b" ".join(tokens))
        elif how == 8:  # && chains, up to past the limit of 15
            for _ in range(rng.choice((1, 3, 15, 16, 20))):
                data += b" && " + self.pick(SUBCOMMANDS)
        elif how == 9:  # a long token (up to the edge of the buffers)
            data[pos:pos] = b"x" * rng.choice((200, 1000, 4000, 8000))
        elif how == 10:  # other separators
            data[pos:pos] = self.pick([b"\t", b"\r", b"  ", b"\r\n", b"\x0b"])
        elif how == 11:  # case
            data = bytearray(data.swapcase() if rng.random() < 0.5 else data.lower())
        else:  # too many tokens
            data += b" x" * rng.choice((10, 19, 20, 24))
        return data

    def overlong(self) -> bytes:
        """A command longer than every buffer."""
        return b"U " + b"y" * self.rng.choice((OVERLONG, 20000, 70000))


def tokens_of(command: bytes) -> list[bytes]:
    """The relay's tokens: trailing NUL padding (OpenSIPS 1.9) is no part of them."""
    stripped = command.strip(b" \t\r\n").rstrip(b"\0 \t\r\n")
    return SEPARATORS.split(stripped) if stripped else []


def info_lines(command: bytes) -> int:
    """How many lines a successful ``I`` reply has: five, six with ``l`` (the load)."""
    word = tokens_of(command)[0]
    return 6 if b"l" in word[1:].lower() else 5


def spare_victims(command: bytes, cookie: bool) -> bytes:
    """Keep ``X`` (delete every session) out: its word becomes ``V``'s."""
    tokens = tokens_of(command)
    index = 1 if cookie else 0
    if len(tokens) <= index or tokens[index][:1] not in (b"X", b"x"):
        return command
    at = command.find(tokens[index])
    if cookie:  # the word after the cookie
        at = command.find(tokens[index], command.find(tokens[0]) + len(tokens[0]))
    return command[:at] + b"V" + command[at + 1 :]


# --------------------------------------------------------------------------- replies

_PORT = re.compile(rb"(\d{1,5})(?: (\S+))?(?: (6))?")
_NUMBER = re.compile(rb"-?\d+(?:\.\d{6})?")
_INFO_LINE = re.compile(rb"[A-Za-z][A-Za-z ]*: -?\d+(?:\.\d+)?")


def _is_port_reply(body: bytes) -> bool:
    match = _PORT.fullmatch(body)
    if match is None or not 0 < int(match[1]) <= 65535:
        return False
    if match[2] is None:
        return match[3] is None
    try:
        address = ipaddress.ip_address(match[2].decode())
    except (ValueError, UnicodeDecodeError):
        return False
    return (match[3] is not None) == (address.version == 6)


def _is_values(body: bytes) -> bool:
    """Q and G: numbers, or ``name=number`` pairs."""
    for token in body.split(b" ") if body else []:
        value = token.partition(b"=")[2] if b"=" in token else token
        if _NUMBER.fullmatch(value) is None:
            return False
    return True


def _is_subresult(body: bytes) -> bool:
    return body == b"0" or _is_port_reply(body) or re.fullmatch(rb"-\d+", body) is not None


def check_reply(command: bytes, body: bytes) -> str | None:
    """None if ``body`` (no cookie, no newline) is a reply the protocol has for
    ``command``, else what is wrong with it."""
    if re.fullmatch(rb"E\d+", body):
        code = int(body[1:])
        return None if code in ERROR_CODES else f"unknown error code {body!r}"
    tokens = tokens_of(command[:MAX_COMMAND])
    if not tokens or any(b"\0" in t for t in tokens):
        return "not E5 for an empty command or a NUL" if tokens != [b"Zsessions"] else None
    word = tokens[0]
    letter = word[:1].upper()
    if len(body) > MAX_REPLY and letter != b"Z":
        return f"reply of {len(body)} bytes"
    if letter != b"I" and b"\n" in body:
        return "newline inside a one-line reply"
    main, *subs = body.split(b" && ")
    if subs and letter not in b"ULQ":
        return "&& results after a command without sub-commands"
    if not all(_is_subresult(s) for s in subs):
        return "bad && result"
    ok: bool
    if letter in (b"U", b"L"):
        ok = _is_port_reply(main) or main == b"0"
    elif letter in (b"D", b"R", b"S", b"N", b"P", b"X"):
        ok = main == b"0"
    elif letter == b"C":
        ok = main == b"0" or _is_port_reply(main)
    elif letter == b"V":
        ok = main == VERSION if len(word) == 1 else main in (b"0", b"1")
        ok = ok and (len(word) == 1 or word[1:2].upper() == b"F")
    elif letter == b"Q":
        ok = bool(main) and _is_values(main)
    elif letter == b"G":
        ok = _is_values(main)
    elif letter == b"I":
        ok = all(_INFO_LINE.fullmatch(line) for line in body.split(b"\n"))
    elif letter == b"Z":
        try:
            ok = isinstance(json.loads(body), dict)
        except ValueError:
            ok = False
    else:
        return f"{body!r} for an unknown command"
    return None if ok else f"{body[:80]!r} is not a reply to {letter.decode('latin-1')}"


# --------------------------------------------------------------------------- results


@dataclass
class Finding:
    transport: str
    command: bytes
    reply: bytes
    why: str

    def as_dict(self) -> dict[str, str]:
        return {
            "transport": self.transport,
            "command": self.command[:300].decode("latin-1"),
            "reply": self.reply[:300].decode("latin-1"),
            "why": self.why,
        }


@dataclass
class Result:
    commands: int = 0
    by_transport: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    hangs: int = 0
    invalid: int = 0
    internal_errors: int = 0
    victim_failures: int = 0
    dropped_connections: int = 0  # overlong lines on cunix:/tcp:, as the protocol says
    udp_resent: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    replies: dict[str, int] = field(default_factory=dict)  # E<n>, port, 0, 1, other

    @property
    def ok(self) -> bool:
        return (
            not (self.crashes or self.hangs or self.invalid or self.internal_errors)
            and not self.victim_failures
        )

    def count_reply(self, body: bytes) -> None:
        main = body.split(b" && ")[0]
        if re.fullmatch(rb"E\d+", main):
            kind = main.decode()
        elif _is_port_reply(main):
            kind = "port"
        elif main in (b"0", b"1"):
            kind = main.decode()
        else:
            kind = "other"
        self.replies[kind] = self.replies.get(kind, 0) + 1

    def finding(self, finding: Finding, internal: bool = False) -> None:
        if internal:
            self.internal_errors += 1
        else:
            self.invalid += 1
        if len(self.findings) < 50:
            self.findings.append(finding)

    def as_dict(self) -> dict[str, object]:
        rate = self.commands / self.seconds if self.seconds else 0.0
        return {
            "commands": self.commands,
            "by_transport": self.by_transport,
            "crashes": self.crashes,
            "hangs": self.hangs,
            "invalid_replies": self.invalid,
            "internal_errors": self.internal_errors,
            "victim_failures": self.victim_failures,
            "dropped_connections": self.dropped_connections,
            "udp_resent": self.udp_resent,
            "seconds": round(self.seconds, 1),
            "commands_per_second": round(rate),
            "replies": dict(sorted(self.replies.items(), key=lambda kv: -kv[1])),
            "findings": [f.as_dict() for f in self.findings],
        }


class RelayGone(Exception):
    """The relay stopped answering (hang) or exited (crash)."""


# --------------------------------------------------------------------------- the relay


@dataclass
class Target:
    """Where the relay listens."""

    unix: str
    cunix: str
    udp: tuple[str, int]
    tcp: tuple[str, int]
    alive: Callable[[], bool]
    media: range = range(0)  # the relay's media ports: sprayed with packets after each batch


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def started_relay(
    command: list[str], workdir: Path, port_min: int = 9000, ports: int = 1000
) -> Iterator[tuple[Target, subprocess.Popen[bytes]]]:
    """Run ``command`` with our control sockets, a record directory, a notify target and
    media ports ``port_min`` .. ``port_min + ports - 1``; SIGTERM its PID at the end."""
    record = workdir / "rec"
    record.mkdir(exist_ok=True)
    target = Target(
        unix=str(workdir / "u.sock"),
        cunix=str(workdir / "c.sock"),
        udp=("127.0.0.1", _free_port(socket.SOCK_DGRAM)),
        tcp=("127.0.0.1", _free_port(socket.SOCK_STREAM)),
        alive=lambda: True,
        media=range(port_min, port_min + ports),
    )
    # -T 10: the sessions fuzzing leaves behind time out (notifying), the victims' media
    # keeps them alive
    args = [*command, "-f", "-F", "-d", "ERR", "-T", "10", "-l", "127.0.0.1"]
    args += ["-m", str(port_min), "-M", str(port_min + ports - 1)]
    args += ["-p", str(workdir / "relay.pid"), "-r", str(record)]
    args += ["-n", f"unix:{workdir / 'notify.sock'}"]
    args += ["-s", f"unix:{target.unix}", "-s", f"cunix:{target.cunix}"]
    args += ["-s", f"udp:127.0.0.1:{target.udp[1]}", "-s", f"tcp:127.0.0.1:{target.tcp[1]}"]
    log_path = workdir / "relay.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    target.alive = lambda: proc.poll() is None
    try:
        deadline = time.monotonic() + 15
        while True:
            if not target.alive():
                raise RuntimeError(f"relay exited at start: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if all(_ask_version(target, t) for t in TRANSPORTS):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("relay did not answer V")
            time.sleep(0.05)
        yield target, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# --------------------------------------------------------------------------- transports


def _recv_all(sock: socket.socket, deadline: float) -> bytes:
    chunks = []
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:  # reset: the relay closed with our data unread
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def unix_command(path: str, data: bytes, timeout: float = REPLY_DEADLINE) -> bytes:
    """Kamailio's unix: exchange: connect, write, read the reply until the relay closes."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            if not data:  # nothing to answer: the relay closes once we do
                sock.shutdown(socket.SHUT_WR)
        return _recv_all(sock, deadline)


class LineConnection:
    """A persistent cunix:/tcp: connection, many commands per write."""

    def __init__(self, connect: Callable[[], socket.socket]) -> None:
        self._connect = connect
        self.sock = connect()
        self.buffer = b""
        self.deadline = 0.0
        self.closed = False

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = self._connect()
        self.buffer = b""

    def exchange(self, lines: list[bytes], overlong: bytes | None) -> tuple[list[bytes], bool]:
        """Send ``lines`` (and an overlong one last); each one's reply (an ``I`` reply is
        several lines), and whether the relay closed the connection after them."""
        payload = b"".join(line + b"\n" for line in lines) + (overlong or b"")
        self.deadline = time.monotonic() + REPLY_DEADLINE
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.settimeout(REPLY_DEADLINE)
            self.sock.sendall(payload)
        replies: list[bytes] = []
        self.closed = False
        for line in lines:
            first = self._line()
            if first is None:
                break
            reply = [first]
            if first.startswith(b"sessions created: "):
                for _ in range(info_lines(line) - 1):
                    more = self._line()
                    if more is None:
                        break
                    reply.append(more)
            replies.append(b"\n".join(reply))
        if overlong is not None:
            while not self.closed and self._fill():
                pass
        return replies, self.closed

    def _line(self) -> bytes | None:
        """The next line without its newline; None once the relay has closed."""
        while b"\n" not in self.buffer:
            if self.closed or not self._fill():
                return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def _fill(self) -> bool:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply on a persistent connection")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(262144)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def close(self) -> None:
        self.sock.close()


def _connect_unix(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REPLY_DEADLINE)
        sock.connect(path)
        return sock

    return connect


def _connect_tcp(address: tuple[str, int]) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.create_connection(address, REPLY_DEADLINE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return connect


def _ask_version(target: Target, transport: str, timeout: float = LIVENESS_DEADLINE) -> bool:
    """The liveness probe: ``V`` answered on ``transport`` within ``timeout``."""
    if transport == "unix":
        return unix_command(target.unix, b"V", timeout) == VERSION + b"\n"
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            cookie = b"live%d" % random.getrandbits(48)
            sock.sendto(cookie + b" V", target.udp)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if sock.recv(65536) == cookie + b" " + VERSION + b"\n":
                    return True
            return False
    connect = _connect_unix(target.cunix) if transport == "cunix" else _connect_tcp(target.tcp)
    with contextlib.closing(connect()) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"V\n")
        deadline = time.monotonic() + timeout
        data = b""
        while b"\n" not in data and time.monotonic() < deadline:
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        return data == VERSION + b"\n"


# --------------------------------------------------------------------------- victims


def rtp_packet(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + bytes(160)


class Victim:
    """A call made before the fuzzing starts, with real RTP both ways after every batch."""

    def __init__(self, target: Target, index: int) -> None:
        self.call = b"victim%d" % index
        self.ft, self.tt = b"vf%d" % index, b"vt%d" % index
        self.caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sock in (self.caller, self.callee):
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(1.0)
        self.target = target
        self.seq = 0
        self.last = (0, 0, 0)
        a = self._port(b"U %s 127.0.0.1 %d %s" % (self.call, self._p(self.caller), self.ft))
        b = self._port(
            b"L %s 127.0.0.1 %d %s %s" % (self.call, self._p(self.callee), self.ft, self.tt)
        )
        self.to_a, self.to_b = ("127.0.0.1", a), ("127.0.0.1", b)
        self.ssrc = 0x5EED0000 + index

    @staticmethod
    def _p(sock: socket.socket) -> int:
        return int(sock.getsockname()[1])

    def _port(self, command: bytes) -> int:
        reply = unix_command(self.target.unix, command)
        return int(reply.split()[0])

    def exercise(self) -> str | None:
        """One packet each way, then ``Q``: None if all is well, else what failed."""
        for sender, dest, receiver in (
            (self.caller, self.to_b, self.callee),
            (self.callee, self.to_a, self.caller),
        ):
            self.seq += 1
            packet = rtp_packet(self.seq, self.ssrc)
            sender.sendto(packet, dest)
            try:
                while receiver.recv(2048) != packet:
                    pass
            except TimeoutError:
                return f"{self.call.decode()}: packet {self.seq} not relayed"
        reply = unix_command(self.target.unix, b"Q %s %s %s" % (self.call, self.ft, self.tt))
        fields = reply.split()
        if len(fields) != 5 or not all(f.isdigit() for f in fields):
            return f"{self.call.decode()}: Q answered {reply!r}"
        counts = (int(fields[1]), int(fields[2]), int(fields[3]))
        if any(now < before for now, before in zip(counts, self.last, strict=True)):
            return f"{self.call.decode()}: Q went backwards {self.last} -> {counts}"
        if counts[2] < self.last[2] + 2:
            return f"{self.call.decode()}: nrelayed did not grow ({self.last} -> {counts})"
        self.last = counts
        return None

    def close(self) -> None:
        self.caller.close()
        self.callee.close()


# --------------------------------------------------------------------------- fuzzing


class Fuzzer:
    """Sends batches of commands over each transport and checks every reply."""

    def __init__(self, target: Target, seed: int, result: Result) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.commands = Commands(self.rng)
        self.result = result
        self.cunix = LineConnection(_connect_unix(target.cunix))
        self.tcp = LineConnection(_connect_tcp(target.tcp))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.udp.connect(target.udp)
        self.udp_seq = 0
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.media.bind(("127.0.0.1", 0))
        self.media.setblocking(False)
        self.cookies: dict[bytes, tuple[float, bytes]] = {}  # answered cookie -> reply

    def close(self) -> None:
        self.cunix.close()
        self.tcp.close()
        self.udp.close()
        self.media.close()

    def check(self, transport: str, command: bytes, reply: bytes) -> None:
        if not reply.endswith(b"\n"):
            self.result.finding(Finding(transport, command, reply, "reply without newline"))
            return
        body = reply[:-1]
        self.result.count_reply(body)
        why = check_reply(command, body)
        if why is not None:
            self.result.finding(Finding(transport, command, reply, why))
        elif body == b"E%d" % INTERNAL_ERROR:
            self.result.finding(Finding(transport, command, reply, "E89"), internal=True)

    def batch(self, transport: str, size: int) -> None:
        batches: dict[str, Callable[[int], int]] = {
            "unix": self._batch_unix,
            "cunix": lambda n: self._batch_stream("cunix", self.cunix, n),
            "tcp": lambda n: self._batch_stream("tcp", self.tcp, n),
            "udp": self._batch_udp,
        }
        sent = batches[transport](size)
        self._spray_media()
        self.result.commands += sent
        self.result.by_transport[transport] = self.result.by_transport.get(transport, 0) + sent

    def _spray_media(self) -> None:
        """Packets at random media ports: RTP with random headers and plain garbage, so
        that the sessions the commands made latch, relay and drop (victims must not)."""
        if not self.target.media:
            return
        rng = self.rng
        for _ in range(MEDIA_SPRAY):
            if rng.random() < 0.5:
                seq, ts, ssrc = rng.randrange(1 << 16), rng.randrange(1 << 32), rng.randrange(4)
                header = struct.pack("!BBHII", 0x80, rng.choice((0, 8, 101, 200)), seq, ts, ssrc)
                packet = header + bytes(rng.choice((0, 160, 1400)))
            else:
                packet = rng.randbytes(rng.choice((0, 1, 12, 300)))
            with contextlib.suppress(OSError):
                self.media.sendto(packet, ("127.0.0.1", rng.choice(self.target.media)))

    def _batch_unix(self, size: int) -> int:
        for _ in range(size):
            command = spare_victims(self.commands.next(), cookie=False)
            if self.rng.random() < 0.002:
                command = self.commands.overlong()
            try:
                reply = unix_command(self.target.unix, command)
            except TimeoutError:
                raise RelayGone(f"unix: no reply to {command[:80]!r}") from None
            if len(command) > MAX_COMMAND and not reply:
                continue  # the relay read its part, replied and closed; we saw the reset
            if not command:
                if reply:
                    self.result.finding(Finding("unix", command, reply, "reply to nothing"))
                continue
            self.check("unix", command, reply)
        return size

    def _batch_stream(self, transport: str, connection: LineConnection, size: int) -> int:
        sent = 0
        while sent < size:
            lines: list[bytes] = []
            while len(lines) < min(STREAM_CHUNK, size - sent):
                command = self.commands.next()
                # a newline inside a command makes two lines, each with its reply
                lines += [spare_victims(part[:8000], cookie=False) for part in command.split(b"\n")]
            sent += len(lines)
            overlong = self.commands.overlong() if self.rng.random() < 0.01 else None
            try:
                replies, closed = connection.exchange(lines, overlong)
            except TimeoutError:
                raise RelayGone(f"{transport}: no reply to a chunk of {len(lines)}") from None
            for line, reply in zip(lines, replies, strict=False):
                self.check(transport, line, reply + b"\n")
            if len(replies) < len(lines):
                self.result.finding(
                    Finding(transport, lines[len(replies)], b"", "connection closed early")
                )
            if overlong is not None:
                if not closed:
                    self.result.finding(Finding(transport, overlong, b"", "overlong line kept"))
                self.result.dropped_connections += 1
            if closed or overlong is not None:
                connection.reconnect()
        return sent

    def _datagram(self) -> tuple[bytes | None, bytes]:
        """A datagram to send and the cookie its reply will carry (None: ``E5`` bare)."""
        rng = self.rng
        roll = rng.random()
        now = time.monotonic()
        if roll < 0.01:
            return None, self.commands.pick([b"", b" ", b"\n", b"\t\r\n"])
        if roll < 0.03 and self.cookies:  # a retransmission, maybe with other text
            cookie = rng.choice(list(self.cookies)[-200:])
            if now - self.cookies[cookie][0] < COOKIE_TTL:
                return cookie, cookie + b" " + spare_victims(self.commands.next(), cookie=False)
        self.udp_seq += 1
        cookie = b"f%d_%d" % (self.udp_seq, rng.randrange(10**6))
        if roll < 0.04:
            return cookie, cookie  # a cookie and nothing else: E5
        if roll < 0.05:
            cookie = self.commands.pick([b"\xff\xfe", b"a" * 300, b"c\x00k", b"%%"]) + cookie
        command = spare_victims(self.commands.next(), cookie=False)
        if rng.random() < 0.002:
            command = self.commands.overlong()
        return cookie, cookie + self.commands.pick([b" ", b"\t", b"  "]) + command

    def _batch_udp(self, size: int) -> int:
        # cookie -> (datagram, command, times sent)
        pending: dict[bytes, tuple[bytes, bytes, int]] = {}
        made = 0
        deadline = time.monotonic() + REPLY_DEADLINE + size * 0.01
        while made < size or pending:
            while made < size and len(pending) < UDP_WINDOW and self._in_flight(pending):
                cookie, datagram = self._datagram()
                made += 1
                if cookie is None:
                    self._bare_datagram(datagram)
                    continue
                if cookie in pending:
                    continue  # the same cookie twice in flight: not a client's behaviour
                datagram = datagram[:65507]
                pending[cookie] = (datagram, datagram[len(cookie) + 1 :], 1)
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    self.udp.send(datagram)
            if not pending:
                continue
            self.udp.settimeout(UDP_RETRY)
            try:
                reply = self.udp.recv(65536)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RelayGone(f"udp: {len(pending)} datagrams unanswered") from None
                for cookie, (datagram, command, tries) in list(pending.items()):
                    pending[cookie] = (datagram, command, tries + 1)
                    self.result.udp_resent += 1
                    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                        self.udp.send(datagram)
                continue
            except ConnectionRefusedError:
                continue
            cookie, _, rest = reply.partition(b" ")
            if cookie not in pending:
                first = self.cookies.get(cookie)
                if first is not None:  # the late twin of a reply to a datagram sent twice
                    if first[1] != reply:
                        self.result.finding(Finding("udp", b"?", reply, "cache gave another reply"))
                elif not cookie.startswith(b"live"):
                    self.result.finding(Finding("udp", b"?", reply, "reply to no datagram we sent"))
                continue
            datagram, command, _tries = pending.pop(cookie)
            first = self.cookies.get(cookie)
            if first is not None and time.monotonic() - first[0] < COOKIE_TTL:
                if first[1] != reply:
                    self.result.finding(Finding("udp", datagram, reply, "cache gave another reply"))
                continue
            self.cookies[cookie] = (time.monotonic(), reply)
            self.check("udp", command, rest)
        self._expire_cookies()
        return made

    @staticmethod
    def _in_flight(pending: dict[bytes, tuple[bytes, bytes, int]]) -> bool:
        """Room for another datagram: what is outstanding fits the relay's receive buffer."""
        return sum(len(d) for d, _c, _t in pending.values()) < UDP_BYTES_IN_FLIGHT

    def _bare_datagram(self, datagram: bytes) -> None:
        """Nothing but separators: ``E5`` without a cookie, sent on its own."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(REPLY_DEADLINE)
            sock.sendto(datagram, self.target.udp)
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                raise RelayGone("udp: no reply to an empty datagram") from None
        if reply != b"E5\n":
            self.result.finding(Finding("udp", datagram, reply, "empty datagram not E5"))

    def _expire_cookies(self) -> None:
        now = time.monotonic()
        for cookie in [c for c, (t, _r) in self.cookies.items() if now - t > COOKIE_TTL]:
            del self.cookies[cookie]


def liveness(target: Target, victims: list[Victim], result: Result) -> None:
    """Raise :class:`RelayGone` unless every socket answers V in time; count victims
    that stopped relaying."""
    if not target.alive():
        result.crashes += 1
        raise RelayGone("the relay exited")
    for transport in TRANSPORTS:
        try:
            answered = _ask_version(target, transport)
        except OSError:
            answered = False
        if not answered:
            result.hangs += 1
            raise RelayGone(f"no V on {transport} within {LIVENESS_DEADLINE}s")
    for victim in victims:
        why = victim.exercise()
        if why is not None:
            result.victim_failures += 1
            result.findings.append(Finding("media", b"", b"", why))


def fuzz(
    target: Target,
    count: int,
    transports: tuple[str, ...] = TRANSPORTS,
    seed: int = 1,
    time_limit: float = 600.0,
    batch: int = 500,
    victims: int = 4,
    progress: Callable[[Result], None] | None = None,
) -> Result:
    """The fuzzer's core: ``count`` commands spread over ``transports`` (stopping early at
    ``time_limit`` seconds), with the checks after every batch."""
    result = Result()
    started = time.monotonic()
    calls = [Victim(target, i) for i in range(victims)]
    fuzzer = Fuzzer(target, seed, result)
    turn = 0
    try:
        liveness(target, calls, result)
        while result.commands < count and time.monotonic() - started < time_limit:
            transport = transports[turn % len(transports)]
            turn += 1
            try:
                fuzzer.batch(transport, min(batch, count - result.commands))
            except (RelayGone, OSError) as exc:
                if target.alive():
                    result.hangs += 1
                else:
                    result.crashes += 1
                result.findings.append(Finding(transport, b"", b"", f"relay gone: {exc}"))
                break
            try:
                liveness(target, calls, result)
            except RelayGone as exc:
                result.findings.append(Finding(transport, b"", b"", str(exc)))
                break
            if progress is not None:
                result.seconds = time.monotonic() - started
                progress(result)
    finally:
        fuzzer.close()
        for call in calls:
            call.close()
        result.seconds = time.monotonic() - started
    return result


# --------------------------------------------------------------------------- main


def machine() -> str:
    facts = machine_facts()
    return (
        f"{facts['cpus']} CPUs {facts['cpu_model']}, kernel {facts['kernel']}, "
        f"Python {facts['python']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="commands to send")
    parser.add_argument("--transport", choices=[*TRANSPORTS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds at most")
    parser.add_argument("--batch", type=int, default=500, help="commands between checks")
    parser.add_argument("--victims", type=int, default=4)
    parser.add_argument(
        "--relay",
        default=f"{sys.executable} -m pyrtpproxy",
        help="relay command line; the control sockets and -l/-m/-M/-r/-n/-p are appended",
    )
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    transports = TRANSPORTS if args.transport == "all" else (args.transport,)
    last_report = [0.0]

    def progress(result: Result) -> None:
        if time.monotonic() - last_report[0] >= 10:
            last_report[0] = time.monotonic()
            rate = result.commands / max(result.seconds, 1e-9)
            print(
                f"[{time.strftime('%H:%M:%S')}] {result.commands} commands, {rate:.0f}/s, "
                f"invalid {result.invalid}, E89 {result.internal_errors}",
                file=sys.stderr,
                flush=True,
            )

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        with started_relay(shlex.split(args.relay), Path(tmp)) as (target, proc):
            result = fuzz(
                target,
                args.count,
                transports,
                args.seed,
                args.time_limit,
                args.batch,
                args.victims,
                progress,
            )
            exited = proc.poll()
        log_tail = (Path(tmp) / "relay.log").read_text(errors="replace")[-3000:]
    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "relay": args.relay,
        "seed": args.seed,
        "transport": args.transport,
        "relay_exit_during_run": exited,
        **result.as_dict(),
    }
    if not result.ok:
        report["relay_log_tail"] = log_tail
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
