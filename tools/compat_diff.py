#!/usr/bin/env python3
"""Compare the control-protocol replies of two rtpproxy-compatible relays.

The tool starts relay A and relay B (one after the other, never both at once)
with the same generated command line, feeds each the same corpus of control
commands over a ``unix:`` socket (one command per connection, no trailing
newline) and over a ``udp:`` socket (with cookies), normalises what may
legitimately differ and prints every reply that differs::

    scenario/transport: command | reply of A | reply of B

Normalisation: every allocated port (a number inside the media port range)
becomes ``P1``, ``P2``... in order of first appearance per relay and run; in
diff mode B's labels are then paired with A's as they first appear side by
side (B's reply is shown with A's labels; an unpaired one shows as ``?Pn``),
so one extra allocation does not make every later reply differ.  Floats
(``longest_ipi``, ``total_duration``...) become ``<float>``; a TTL in a ``Q``
reply may differ by one.  Both relays get ``-b`` (sequential ports) unless
``--random-ports`` is given, so freed ports are not re-used at random.

``--only-a`` runs relay A alone and prints all its replies; steps that carry
an expectation taken from the spec (shared/spec/*.md) are flagged with
``!! spec:`` when the reply does not match it.

All traffic stays on loopback.  The relays are started in the foreground and
are killed by PID when the tool ends, also on Ctrl-C, SIGTERM or an error.
The tool always exits with status 0: it is a report, not a test.

Examples::

    tools/compat_diff.py --only-a --a /work/ref/rtpproxy/src/rtpproxy
    tools/compat_diff.py --a /work/ref/rtpproxy/src/rtpproxy \\
        --b "/work/main/.venv/bin/pyrtpproxy"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
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
from types import FrameType

LOOPBACK = "127.0.0.1"
DEFAULT_PORT_MIN = 47000
DEFAULT_PORT_MAX = 47399
NO_REPLY = b"<no reply>"

# --------------------------------------------------------------------------
# Corpus description
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One action of a scenario.

    kind:
      ``cmd``   send ``data`` on the scenario's transport (UDP: a cookie is added)
      ``raw``   send ``data`` verbatim (UDP: no cookie is added)
      ``sleep`` wait ``seconds``
      ``rtp``   send ``count`` RTP packets from media client ``client`` to relay
                port ``port`` (a label such as ``P1``; ``+1`` in ``rtcp`` mode)
      ``files`` list the recording directory (names only)
    """

    kind: str
    data: bytes = b""
    expect: str | None = None  # regex the reply body must fully match (spec)
    cookie: str | None = None  # explicit UDP cookie (retransmission tests)
    seconds: float = 0.0
    client: int = 1
    port: str = "P1"
    count: int = 1
    ssrc: int = 0x11223344
    rtcp: bool = False

    def label(self) -> str:
        if self.kind in ("cmd", "raw"):
            text = show(self.data)
            if self.kind == "raw":
                text = f"raw[{text}]"
            elif self.cookie is not None:
                text = f"[cookie {self.cookie}] {text}"
            return text
        if self.kind == "sleep":
            return f"<sleep {self.seconds}s>"
        if self.kind == "rtp":
            what = "rtcp" if self.rtcp else "rtp"
            return f"<{self.count} {what} pkts C{self.client} -> {self.port}>"
        return f"<{self.kind}>"


@dataclass
class Scenario:
    name: str
    steps: list[Step]
    extra_args: list[str] = field(default_factory=list)
    listen: list[str] = field(default_factory=lambda: ["-l", LOOPBACK])
    transports: tuple[str, ...] = ("unix", "udp")
    port_range: tuple[int, int] | None = None  # None = the tool's default range


def cmd(text: str | bytes, expect: str | None = None, cookie: str | None = None) -> Step:
    data = text.encode("latin-1") if isinstance(text, str) else text
    return Step("cmd", data=data, expect=expect, cookie=cookie)


def raw(data: bytes, expect: str | None = None) -> Step:
    return Step("raw", data=data, expect=expect)


def sleep(seconds: float) -> Step:
    return Step("sleep", seconds=seconds)


PORT = r"P\d+"
PORT_ADDR = PORT + r" 127\.0\.0\.1"
ERR = r"E\d+"

CAPABILITIES = [
    "20040107", "20050322", "20060704", "20071116", "20071218", "20080403",
    "20081102", "20090810", "20140323", "20140617", "20141004", "20150330",
    "20150420", "20150617", "20191015", "20200226", "20230205", "20230314",
    "20230424", "20250523", "20251015", "20260306", "20260308", "20260309",
]  # fmt: skip

GLOBAL_COUNTERS = [
    "nsess_created", "nsess_destroyed", "nsess_timeout", "nsess_complete",
    "nsess_nortp", "nsess_owrtp", "nsess_nortcp", "nsess_owrtcp",
    "nplrs_created", "nplrs_destroyed", "npkts_rcvd", "npkts_played",
    "npkts_relayed", "npkts_resizer_in", "npkts_resizer_out",
    "npkts_resizer_discard", "npkts_discard", "total_duration", "ncmds_rcvd",
    "ncmds_rcvd_ndups", "ncmds_succd", "ncmds_errs", "ncmds_repld",
    "rtpa_nsent", "rtpa_nrcvd", "rtpa_ndups", "rtpa_nlost", "rtpa_perrs", "pps_in",
]  # fmt: skip

SESSION_COUNTERS = [
    "ttl", "npkts_ina", "npkts_ino", "nrelayed", "ndropped", "rtpa_nsent",
    "rtpa_nrcvd", "rtpa_ndups", "rtpa_nlost", "rtpa_perrs", "longest_ipi",
    "rtpa_jlast", "rtpa_jmax", "rtpa_javg",
]  # fmt: skip


def version_steps() -> list[Step]:
    steps = [
        cmd("V", "20040107"),
        cmd("v", "20040107"),
        cmd("V x", "E1"),
        cmd("Vx", "E2"),
        cmd("V\n", "20040107"),
        cmd("V\r\n", "20040107"),
        cmd("V\nVF 20040107\n", "E1"),
        cmd("\tV\t", "20040107"),
    ]
    for date in CAPABILITIES:
        steps.append(cmd(f"VF {date}", "1"))
    steps += [
        cmd("VF 20081224", "0"),  # only 1 when -n is configured
        cmd("VF 20170313", "0"),
        cmd("VF 0", "0"),
        cmd("VF abc", "0"),
        cmd("vf 20050322", "1"),
        cmd("Vf 20050322", "1"),
        cmd("Vf", "E1"),
        cmd("VF 20040107 x", "E1"),
        cmd("VFx 20040107", "E2"),
        cmd("Vfgarbage x", "E2"),
        cmd("Vf x", "0"),
    ]
    return steps


def framing_steps() -> list[Step]:
    many = " ".join(str(i) for i in range(1, 20))
    return [
        cmd(" ", "E5"),
        cmd("\t\r\n", "E5"),
        cmd("A", "E0"),
        cmd("B", "E0"),
        cmd("Z", "E0"),
        cmd("1", "E0"),
        cmd("#", "E0"),
        cmd("A" * 64, "E0"),
        cmd("A aVF 20080403", "E0"),
        cmd(b"\xffV", "E0"),
        cmd(b"V\x00", "E5"),
        cmd(b"U nul\x00id 127.0.0.1 5000 ft", "E5"),
        # 24 tokens -> E5, 23 tokens -> E1 (too many args for U)
        cmd(f"U cid 127.0.0.1 12345 ftag {many}", "E5"),
        cmd("U cid 127.0.0.1 12345 ftag " + " ".join(str(i) for i in range(1, 19)), "E1"),
        cmd("U cid 127.0.0.1 12345 ftag &&", "E5"),
        cmd(f"U cid 127.0.0.1 12345 ftag && {many}", "E3"),
        cmd("V && V", None),
        cmd("X && X", None),
        cmd("D nosuch ft && D", None),
        cmd("&& V", None),
        cmd("G " + "x " * 30, None),
    ]


def update_steps() -> list[Step]:
    steps = [
        cmd("U", "E1"),
        cmd("U cid", "E1"),
        cmd("U cid tag", "E1"),
        cmd("U cid tag 39d9", "E1"),
        cmd("U u5 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("U u5 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("U u6 127.0.0.1 5000 ft tt", PORT_ADDR),
        cmd("U u7 127.0.0.1 5000 ft ns tag", "E75"),
        cmd("U u8 127.0.0.1 5000 ft tt ns tag", "E75"),
        cmd("U u9 127.0.0.1 5000 ft tt ns tag extra", "E1"),
        cmd("U cid addr port ftag ttag %%RTPP_NS%% %%X%%", "E10"),
        cmd("U cid addr port ftag ttag ns %25%25X%25%25", "E75"),
        cmd("U cid W3.IT2Nl-t.gTL1Sejky 39d9ashjo ndkshf23", PORT_ADDR),
        cmd("u lc 127.0.0.1 5000 t", PORT_ADDR),
        cmd("d lc t", "0"),
    ]
    # Modifiers, one per step (each on its own call-id so sessions do not mix).
    mods: list[tuple[str, str | None]] = [
        ("a", PORT_ADDR), ("s", PORT_ADDR), ("w", PORT_ADDR), ("A", PORT_ADDR),
        ("i", "E12"), ("e", "E11"), ("ie", "E12"), ("ei", "E11"), ("iee", None),
        ("6", "E36"), ("z20", PORT_ADDR), ("z1", PORT_ADDR), ("z999", PORT_ADDR),
        ("z0", "E13"), ("z1000", "E13"), ("z", "E13"), ("zx", "E13"),
        ("c0,8", PORT_ADDR), ("c0,8,101", PORT_ADDR), ("c", "E14"), ("c0c8", "E14"),
        ("cx", "E14"), ("c,", None), ("c8,", None),
        ("l127.0.0.1", PORT_ADDR), ("l", "E15"), ("lx", "E15"),
        ("l[1:2:3:4:5]", "E31"), ("l10.9.9.9", "E31"), ("l{nolabel}", "E31"),
        ("l{", None),
        ("r127.0.0.1", PORT_ADDR), ("r", "E16"), ("rx", "E16"),
        ("r[1:2:3:4:5]", "E32"), ("r127.0.0.2z20", PORT_ADDR),
        ("n", PORT_ADDR), ("x", "E35"), ("garbage", "E35"), ("sacwz30c8", "E14"),
        ("c0,8,101z20", PORT_ADDR), ("asw", PORT_ADDR), ("Z20", PORT_ADDR),
        ("z20z30", None), ("c0c", "E14"), ("1", "E35"), ("-", "E35"),
    ]  # fmt: skip
    for i, (mod, expect) in enumerate(mods):
        steps.append(cmd(f"U{mod} um{i} 127.0.0.1 5000 ft", expect))
    steps.append(cmd("Ugarbage cid addr port tag", "E35"))
    steps.append(cmd("Uie cid addr port tag", "E12"))
    steps.append(cmd("Uei cid addr port tag", "E11"))
    steps.append(cmd("Uz0 cid addr port tag", "E13"))
    steps.append(cmd("Uc cid addr port tag", "E14"))
    steps.append(cmd("Ul cid addr port tag", "E15"))
    steps.append(cmd("Ur cid addr port tag", "E16"))
    steps.append(cmd("Un un 127.0.0.1 5000 ft", PORT_ADDR))
    steps.append(cmd("Un un 127.0.0.1 5000 ft", PORT_ADDR))
    steps.append(cmd("U un 127.0.0.1 5000 ft", PORT_ADDR))
    return steps


def address_steps() -> list[Step]:
    cases: list[tuple[str, str, str | None]] = [
        ("0.0.0.0", "5000", PORT_ADDR), ("127.0.0.1", "0", PORT_ADDR),
        ("127.0.0.1", "65535", PORT_ADDR), ("127.0.0.1", "65536", PORT_ADDR),
        ("127.0.0.1", "99999", PORT_ADDR), ("127.0.0.1", "-1", "E37"),
        ("127.0.0.1", "abc", "E37"), ("127.0.0.1", "5000x", None),
        ("127.0.0.1", "4294967297", None), ("1.2.3", "5000", PORT_ADDR),
        ("::1", "5000", PORT_ADDR), ("localhost.localdomain", "5000", PORT_ADDR),
        ("localhost", "5000", "E37"), ("1.2.3.456", "5000", "E37"),
        ("1.2.3.4.5", "5000", None), ("255.255.255.255", "5000", None),
        ("10.0.0.1", "5000", PORT_ADDR), ("[::1]", "5000", None),
        ("0.0.0.0", "0", PORT_ADDR),
    ]  # fmt: skip
    steps = [cmd(f"U ad{i} {a} {p} ft", e) for i, (a, p, e) in enumerate(cases)]
    steps.append(cmd("U6 c ::1 5000 a", "E36"))
    steps.append(cmd("U6 c6 127.0.0.1 5000 a", "E36"))
    steps.append(cmd("L ad0 1.2.3.456 5000 ft tt", "E37"))
    steps.append(cmd("L ad0 127.0.0.1 abc ft tt", "E37"))
    return steps


def lookup_steps() -> list[Step]:
    return [
        # protocol.md 4.1 example
        cmd("U call1 127.0.0.1 40000 fromtag1", PORT_ADDR),
        cmd("U call1 127.0.0.1 40000 fromtag1", PORT_ADDR),
        cmd("L call1 127.0.0.1 40002 fromtag1 totag1", PORT_ADDR),
        cmd("L call1 127.0.0.1 40002 fromtag1 totag1", PORT_ADDR),
        cmd("U call1 127.0.0.1 40000 fromtag1 totag1", PORT_ADDR),
        cmd("U call1 127.0.0.1 40002 totag1 fromtag1", PORT_ADDR),
        cmd("L call1 127.0.0.1 40000 totag1 fromtag1", PORT_ADDR),
        cmd("L call2 127.0.0.1 4000 a b", "0"),
        cmd("L call1 127.0.0.1 4000 fromtag1", None),
        cmd("L call1 127.0.0.1 4000 totag1", None),
        cmd("L", "E1"),
        cmd("L call1", "E1"),
        cmd("L call1 127.0.0.1 4000", "E1"),
        cmd("L call1 127.0.0.1 4000 a b ns tag", "E1"),
        cmd("L call1 127.0.0.1 4000 a b c", "E1"),
        cmd("Lx call1 127.0.0.1 40002 fromtag1 totag1", "E35"),
        cmd("Lie call1 127.0.0.1 40002 fromtag1 totag1", "E12"),
        cmd("Lz20 call1 127.0.0.1 40002 fromtag1 totag1", PORT_ADDR),
        cmd("Lc0,8 call1 127.0.0.1 40002 fromtag1 totag1", PORT_ADDR),
        cmd("Ln call1 127.0.0.1 40002 fromtag1 totag1", PORT_ADDR),
        cmd("La call1 127.0.0.1 40002 fromtag1 totag1", PORT_ADDR),
        cmd("Lw call1 127.0.0.1 40002 fromtag1 totag1", PORT_ADDR),
        cmd("Q call1 fromtag1 totag1", r"\d+ 0 0 0 0"),
        cmd("Q call1 totag1 fromtag1", r"\d+ 0 0 0 0"),
        cmd("Q call1 fromtag1", r"\d+ 0 0 0 0"),
        cmd("Q call1 nosuch", "E50"),
        # U from the callee before any L completes the session
        cmd("U rev 127.0.0.1 6000 ft", PORT_ADDR),
        cmd("U rev 127.0.0.1 6002 tt ft", PORT_ADDR),
        cmd("L rev 127.0.0.1 6002 ft tt", PORT_ADDR),
        # U ... && L (single shot)
        cmd("U ss 127.0.0.1 7000 ft tt && L 127.0.0.1 7002", None),
        cmd("Q ss ft tt", None),
        cmd("U ss2 127.0.0.1 7000 ft && L 127.0.0.1 7002", None),
        cmd("U ss3 127.0.0.1 7000 ft tt && Lx 127.0.0.1 7002", None),
        cmd("U ss4 127.0.0.1 7000 ft tt && L", None),
        cmd("G nsess_created nsess_complete", None),
    ]


def tag_steps() -> list[Step]:
    odd = [
        b"\xff\xfe\x80call",
        b"*3:R9//u@-JojSdZ\\`-KJ!?we",
        b";=%\"'<>{}[]*:/@\\",
        b"CaseSens",
    ]
    steps = [
        cmd("U mt 127.0.0.1 5000 ft;1", PORT_ADDR),
        cmd("U mt 127.0.0.1 5010 ft;2", PORT_ADDR),
        cmd("L mt 127.0.0.1 5002 ft;1 tt;1", PORT_ADDR),
        cmd("L mt 127.0.0.1 5012 ft;2 tt;2", PORT_ADDR),
        cmd("Q mt ft tt", "E50"),
        cmd("Q mt ft;1 tt;1", r"\d+ 0 0 0 0"),
        cmd("Q mt tt;2 ft;2", r"\d+ 0 0 0 0"),
        cmd("Q mt ft;3 tt;3", "E50"),
        cmd("L mt 127.0.0.1 5002 tt;1 ft;1", PORT_ADDR),
        cmd("U mt 127.0.0.1 5002 tt;1 ft;1", PORT_ADDR),
        cmd("S mt ft tt", None),
        cmd("D mt ft", "0"),
        cmd("Q mt ft;1 tt;1", "E50"),
        cmd("Q mt ft;2 tt;2", "E50"),
        cmd("U mt2 127.0.0.1 5000 ft;1", PORT_ADDR),
        cmd("D mt2 x ft", "0"),
        cmd("Q mt2 ft;1", "E50"),
        cmd("U mt3 127.0.0.1 5000 ftx", PORT_ADDR),
        cmd("D mt3 ft", "E50"),
        cmd("D mt3 ftx", "0"),
    ]
    for i, cid in enumerate(odd):
        steps += [
            cmd(b"U " + cid + b" 127.0.0.1 5000 t\xc3\x28", PORT_ADDR),
            cmd(b"L " + cid + b" 127.0.0.1 5002 t\xc3\x28 tt" + str(i).encode(), PORT_ADDR),
            cmd(b"Q " + cid + b" t\xc3\x28 tt" + str(i).encode(), r"\d+ 0 0 0 0"),
            cmd(b"Q " + cid.lower() + b" t\xc3\x28", None),
            cmd(b"D " + cid + b" t\xc3\x28", "0"),
        ]
    steps += [
        cmd("U\ttab\t127.0.0.1\t5000\tft", PORT_ADDR),
        cmd("D\rtab\rft", "0"),
        cmd("U  spaces   127.0.0.1  5000  ft  ", PORT_ADDR),
        cmd("D spaces ft", "0"),
    ]
    return steps


def delete_steps() -> list[Step]:
    return [
        cmd("D", "E1"),
        cmd("D cid", "E1"),
        cmd("D cid a b c", "E1"),
        cmd("Dgarbage a", "E1"),
        cmd("Dgarbage cid ftag", "E8"),
        cmd("Dx a b", "E8"),
        cmd("D nosuch ftag", "E50"),
        cmd("Dw nosuch ftag", "E50"),
        # weak quirk (protocol.md 5.6)
        cmd("Uw wk 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("Dw wk ft", "0"),
        cmd("Q wk ft", r"\d+ 0 0 0 0"),
        cmd("D wk ft", "0"),
        cmd("Q wk ft", r"\d+ 0 0 0 0"),
        cmd("Dw wk x ft", "0"),
        cmd("Q wk ft", "E50"),
        cmd("U wk2 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("Uw wk2 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("D wk2 ft", "0"),
        cmd("Q wk2 ft", r"\d+ 0 0 0 0"),
        cmd("Dw wk2 x ft", "0"),
        cmd("Q wk2 ft", None),
        cmd("U dl 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("L dl 127.0.0.1 5002 ft tt", PORT_ADDR),
        cmd("D dl tt ft", "0"),
        cmd("D dl tt ft", "E50"),
        cmd("U dl2 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("Dwx dl2 ft", "E8"),
        cmd("DW dl2 x ft", None),
        cmd("D dl2 ft", None),
    ]


def misc_command_steps() -> list[Step]:
    qcounters = " ".join(SESSION_COUNTERS)
    q1 = " ".join(SESSION_COUNTERS[:7])
    q2 = " ".join(SESSION_COUNTERS[7:])
    g1 = " ".join(GLOBAL_COUNTERS[:15])
    g2 = " ".join(GLOBAL_COUNTERS[15:])
    return [
        cmd("U ms 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("L ms 127.0.0.1 5002 ft tt", PORT_ADDR),
        # R / N
        cmd("R", "E1"),
        cmd("R ms", "E1"),
        cmd("R ms ft tt x", "E1"),
        cmd("R ms ft", "E50"),
        cmd("R ms ft tt", "E50"),
        cmd("Rs ms ft tt", "E50"),
        cmd("Rp ms ft", "E6"),
        cmd("Rp a b", "E6"),
        cmd("Rx a b", "E7"),
        cmd("R nosuch ft", "E50"),
        cmd("N ms ft", "E50"),
        cmd("Na ms ft", "E50"),
        cmd("Nax a b", "E6"),
        cmd("Nx a b", "E7"),
        cmd("N", "E1"),
        cmd("N a b c d", "E1"),
        # C
        cmd("C", "E1"),
        cmd("C ms target", "E1"),
        cmd("Cgarbage cid target ftag ttag", "E7"),
        cmd("C ms target ft tt", "E65"),
        cmd("C nosuch target ft tt", None),
        cmd("C ms udp:127.0.0.1:9 ft tt", None),
        cmd("Cp ms udp:127.0.0.1:9 ft tt", None),
        cmd("Cp ms target ft tt", None),
        cmd("Cs ms target ft", None),
        cmd("Cx ms target ft", "E7"),
        # P / S
        cmd("P", "E1"),
        cmd("P ms prompt 0 ft tt x", "E1"),
        cmd("Pgarbage cid p codecs ftag", "E17"),
        cmd("P ms prompt 0,8 ft tt", "E60"),
        cmd("P nosuch prompt 0 ft", "E50"),
        cmd("P0 ms prompt 0 ft", None),
        cmd("P3 ms prompt session ft", None),
        cmd("P ms /nonexistent/prompt 0 ft", "E60"),
        cmd("S", "E1"),
        cmd("S ms ft", "0"),
        cmd("S ms ft tt", "0"),
        cmd("Sx a b", "E2"),
        cmd("S nosuch ft", "E50"),
        cmd("S a b c d", "E1"),
        # Q
        cmd("Q", "E1"),
        cmd("Q ms", "E1"),
        cmd("Q ms ft tt", r"\d+ 0 0 0 0"),
        cmd("Qv ms ft tt", r"ttl=\d+ npkts_ina=0 npkts_ino=0 nrelayed=0 ndropped=0"),
        cmd(f"Q ms ft tt {qcounters}", "E1"),  # 18 tokens > 15
        cmd(f"Qv ms ft tt {q1}", None),
        cmd(f"Qv ms ft tt {q2}", None),
        cmd(f"Q ms ft tt {q2}", None),
        cmd("Q ms ft ttl npkts_ina", "0"),  # 4th token is the to_tag
        cmd("Qv ms ft tt garbage", "E62"),
        cmd("Q ms ft tt ttl ttl ttl", None),
        cmd("Qg ms ft tt", "E19"),
        cmd("Qx nosuch tag", "E50"),
        cmd("Q ms ft tt " + " ".join(["ttl"] * 11), None),
        cmd("Q ms ft tt " + " ".join(["ttl"] * 12), "E1"),
        cmd("Q ms ft tt " + " ".join(["ttl"] * 13), "E1"),
        cmd("Qvv ms ft tt", None),
        cmd("Q ms ft tt && D", r"\d+ 0 0 0 0 && 0"),
        cmd("Q ms ft tt", "E50"),
        cmd("U ms2 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("Q ms2 ft && Dw", None),
        cmd("Q ms2 ft && S ttl=30", None),
        cmd("Q ms2 ft && Sx", None),
        cmd("Q ms2 ft && D && D", None),
        cmd("U ms6 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("Q ms6 ft && S ttl=20 && D", None),
        cmd("U ms7 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("Q ms7 ft && S ttl=20", None),
        cmd("Q ms7 ft && Sx ttl=20", None),
        cmd("Q ms7 ft && S tos=0", None),
        cmd("Q ms7 ft && S bogus=1", None),
        cmd("Q ms7 ft && Dw && D", None),
        cmd("Q ms7 ft", None),
        cmd("U ms3 127.0.0.1 5000 ft && S ttl=30", None),
        cmd("Q ms3 ft", None),
        cmd("U ms4 127.0.0.1 5000 ft && C udp:127.0.0.1:9", None),
        cmd("U ms5 127.0.0.1 5000 ft " + "&& Q " * 16, None),
        cmd("D ms3 ft && D", None),
        # G
        cmd("G", ""),
        cmd("Gv", ""),
        cmd("G nsess_created", r"\d+"),
        cmd("Gv nsess_created", r"nsess_created=\d+"),
        cmd("G nonsense", "E68"),
        cmd("Ggarbage nonsense", "E9"),
        cmd("Gvgarbage", "E9"),
        cmd("Gx", "E9"),
        cmd("G " + " ".join(GLOBAL_COUNTERS), "E5"),  # >= 24 tokens
        cmd(f"G {g1}", None),
        cmd(f"Gv {g1}", None),
        cmd(f"G {g2}", None),
        cmd(f"Gv {g2}", None),
        cmd("G nsess_created nonsense", "E68"),
        cmd("G " + " ".join(["nsess_created"] * 23), None),
        # I
        cmd(
            "I",
            r"sessions created: \d+\nactive sessions: \d+\nactive streams: \d+\n"
            r"packets received: \d+\npackets transmitted: \d+",
        ),
        cmd("Ib", None),
        cmd("Il", None),
        cmd("Ibl", None),
        cmd("i", None),
        cmd("Igarbage", "E18"),
        cmd("Igarbage x", "E1"),
        cmd("I x", "E1"),
        # X
        cmd("X x", "E1"),
        cmd("Xa", "E2"),
        cmd("X", "0"),
        cmd("I", None),
        cmd("G nsess_created nsess_destroyed nsess_timeout nsess_complete", None),
        cmd(
            "G ncmds_rcvd ncmds_rcvd_ndups ncmds_succd ncmds_errs ncmds_repld",
            None,
        ),
    ]


def size_steps() -> list[Step]:
    return [
        cmd("U " + "x" * 5000 + " 127.0.0.1 5000 ft", None),
        cmd("D " + "x" * 5000 + " ft", None),
        cmd("U big 127.0.0.1 5000 " + "t" * 1000, None),
        cmd("Q big " + "t" * 1000, None),
        cmd("c " + "c" * 9000 + " V", None),
        cmd("V " + " " * 9000, None),
    ]


def udp_cookie_steps() -> list[Step]:
    return [
        raw(b"abc V", "abc 20040107"),
        raw(b"abc G nsess_created", "abc 20040107"),
        raw(b"k2 U cookiecall 127.0.0.1 5000 t1", "k2 " + PORT_ADDR),
        raw(b"k2 U cookiecall 127.0.0.1 5000 t1", "k2 " + PORT_ADDR),
        raw(b"k3 U cookiecall 127.0.0.1 5000 t2", "k3 " + PORT_ADDR),
        raw(b"k2 U othercall 127.0.0.1 5000 t1", "k2 " + PORT_ADDR),
        raw(b"k4", "k4 E5"),
        raw(b"", "E5"),
        raw(b" ", None),
        raw(b"V", "V E5"),
        raw(b"k6 Z", "k6 E0"),
        raw(b"k7 D nosuch a", "k7 E50"),
        raw(b"k8 V\n", "k8 20040107"),
        raw(b"k9\tV", "k9 20040107"),
        raw(b"k10\tV", "k10 20040107"),
        raw(b"k11 VF 20040107 x", "k11 E1"),
        raw(b"\xffck V", None),
        raw(b"ck " + b"c" * 9000 + b" V", "ck E1"),
        raw(b"k12 G nsess_created ncmds_rcvd ncmds_rcvd_ndups", None),
        raw(b"k12 G nsess_created ncmds_rcvd ncmds_rcvd_ndups", None),
        raw(b"k13 G nsess_created ncmds_rcvd ncmds_rcvd_ndups ncmds_repld", None),
        raw(b"k14 I", None),
    ]


def unix_framing_steps() -> list[Step]:
    return [
        raw(b"", None),  # connect and close: no reply expected
        raw(b"V", "20040107"),
        raw(b"G ncmds_rcvd", None),
        raw(b"abc V", "E0"),
        raw(b"V" + b" " * 9000, None),
        raw(b"U " + b"y" * 9000 + b" 127.0.0.1 5000 ft", None),
        raw(b"G ncmds_rcvd ncmds_errs", None),
    ]


def bridge_steps() -> list[Step]:
    adv1 = PORT + r" 192\.0\.2\.1"
    adv2 = PORT + r" 192\.0\.2\.2"
    return [
        cmd("U b1 127.0.0.1 5000 ft", adv1),
        cmd("Uie b2 127.0.0.1 5000 ft", adv2),
        cmd("Lie b2 127.0.0.1 5002 ft tt", adv1),
        cmd("Uei b3 127.0.0.1 5000 ft", adv1),
        cmd("Lei b3 127.0.0.1 5002 ft tt", adv2),
        cmd("Ui b4 127.0.0.1 5000 ft", None),
        cmd("Ue b5 127.0.0.1 5000 ft", None),
        cmd("Uiee b6 1.1.1.1 5 ft", "E11"),
        cmd("Ueii b7 1.1.1.1 5 ft", "E12"),
        cmd("Ul127.0.0.2 b12 127.0.0.1 5000 ft", adv2),
        cmd("Ul127.0.0.1 b12b 127.0.0.1 5000 ft", adv1),
        cmd("Ul127.0.0.3 b12c 127.0.0.1 5000 ft", "E31"),
        cmd("Un b13 127.0.0.1 5000 ft", adv1),
        cmd("Un b13 127.0.0.1 5000 ft", adv1),
        cmd("Usacwz30c8 b14 127.0.0.1 5000 ft", "E14"),
        cmd("Ur127.0.0.2 b15 127.0.0.1 5000 ft", None),
        cmd("Us b16 127.0.0.1 5000 ft", adv1),
        cmd("Q b2 ft tt", r"\d+ 0 0 0 0"),
        cmd("I", None),
    ]


def notify_steps() -> list[Step]:
    return [
        cmd("VF 20081224", "1"),
        cmd("VF 20150617", "1"),
        cmd("U n1 127.0.0.1 5000 ft unix:{TMP}/notify.sock tag1", PORT_ADDR),
        cmd("U n2 127.0.0.1 5000 ft {TMP}/notify.sock tag2", PORT_ADDR),
        cmd("U n3 127.0.0.1 5000 ft tt unix:{TMP}/notify.sock tag%20three", PORT_ADDR),
        cmd("U n4 127.0.0.1 5000 ft unknown.sock tag4", PORT_ADDR),
        cmd("U n5 127.0.0.1 5000 ft unix:{TMP}/notify.sock %%RTPP%%", "E10"),
        cmd("U n6 127.0.0.1 5000 ft unix:{TMP}/notify.sock %2", "E10"),
        cmd("U n7 127.0.0.1 5000 ft unix:{TMP}/notify.sock %zz", "E10"),
        cmd("U n8 127.0.0.1 5000 ft unix:{TMP}/notify.sock %25%25X%25%25", PORT_ADDR),
        cmd("U n9 127.0.0.1 5000 ft tt unix:{TMP}/notify.sock", PORT_ADDR),
        cmd("U n10 127.0.0.1 5000 ft tt x unix:{TMP}/notify.sock tag", "E1"),
        cmd("U n11 127.0.0.1 5000 ft tcp:%%CC_SELF%%:9 t", PORT_ADDR),
        cmd("U n1 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("L n1 127.0.0.1 5002 ft tt ns tag", "E1"),
        cmd("G nsess_created", None),
    ]


def record_steps() -> list[Step]:
    return [
        cmd("U rc 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("L rc 127.0.0.1 5002 ft tt", PORT_ADDR),
        cmd("R rc ft", "0"),
        cmd("R rc ft tt", "0"),
        cmd("Rs rc ft tt", None),
        cmd("R nosuch ft", "E50"),
        cmd("N rc ft", "0"),
        cmd("Na rc ft tt", None),
        cmd("N rc ft", None),
        cmd("Rs rc tt", None),
        cmd("C rc target ft tt", "0"),
        cmd("Cp rc target ft tt", None),
        cmd("Cs rc target2 ft", None),
        cmd("Cp rc udp:127.0.0.1:{C3} ft tt", PORT_ADDR),
        cmd("U rc2 127.0.0.1 5000 ft;1", PORT_ADDR),
        cmd("U rc2 127.0.0.1 5010 ft;2", PORT_ADDR),
        cmd("R rc2 ft", "0"),
        cmd("D rc ft", "0"),
        cmd("D rc2 ft", "0"),
        Step("files"),
    ]


def media_steps() -> list[Step]:
    counters = SESSION_COUNTERS
    return [
        cmd("U md 127.0.0.1 {C1} ft", PORT_ADDR),
        Step("rtp", client=2, port="P1", count=2),  # before completion: discarded
        cmd("L md 127.0.0.1 {C2} ft tt", PORT_ADDR),
        cmd("G npkts_rcvd npkts_discard", None),
        Step("rtp", client=1, port="P2", count=3, ssrc=0x1111),
        Step("rtp", client=2, port="P1", count=2, ssrc=0x2222),
        Step("rtp", client=1, port="P2", count=1, ssrc=0x1111, rtcp=True),
        sleep(0.3),
        cmd("Q md ft tt", r"\d+ \d+ \d+ \d+ \d+"),
        cmd("Qv md ft tt", None),
        cmd("Qv md tt ft", None),
        cmd(f"Qv md ft tt {' '.join(counters[:7])}", None),
        cmd(f"Qv md ft tt {' '.join(counters[7:])}", None),
        cmd(f"Q md tt ft {' '.join(counters[7:])}", None),
        cmd(
            "G npkts_rcvd npkts_relayed npkts_discard rtpa_nsent rtpa_nrcvd nsess_complete",
            None,
        ),
        cmd("I", None),
        cmd("U md2 0.0.0.0 0 ft", PORT_ADDR),
        cmd("L md2 0.0.0.0 0 ft tt", PORT_ADDR),
        Step("rtp", client=1, port="P4", count=2, ssrc=0x3333),
        sleep(0.3),
        cmd("Qv md2 ft tt", None),
        cmd("Q md ft tt && D", None),
        cmd("D md2 ft", "0"),
        cmd("G nsess_destroyed nsess_nortp nsess_owrtp nsess_nortcp nsess_owrtcp", None),
    ]


def timeout_steps() -> list[Step]:
    return [
        cmd("U to 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("U to2 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("L to2 127.0.0.1 5002 ft tt", PORT_ADDR),
        cmd("Q to ft", None),
        cmd("Q to2 ft tt", None),
        sleep(2.2),
        cmd("Q to ft", None),
        cmd("Q to2 ft tt", None),
        sleep(2.2),
        cmd("Q to ft", "E50"),
        cmd("Q to2 ft tt", "E50"),
        cmd("G nsess_created nsess_destroyed nsess_timeout", None),
    ]


def exhaust_steps() -> list[Step]:
    return [
        cmd("U ex1 127.0.0.1 5000 ft", PORT_ADDR),
        cmd("L ex1 127.0.0.1 5002 ft tt", PORT_ADDR),
        cmd("U ex2 127.0.0.1 5000 ft", "E72"),
        cmd("Un ex1 127.0.0.1 5000 ft", None),
        cmd("D ex1 ft", "0"),
        cmd("U ex2 127.0.0.1 5000 ft", None),
        sleep(1.5),
        cmd("U ex3 127.0.0.1 5000 ft", PORT_ADDR),
    ]


def ipv6_steps() -> list[Step]:
    return [
        cmd("U c1 127.0.0.1 5000 ft", PORT + r" 203\.0\.113\.5"),
        cmd("U6 c2 ::1 5000 ft", PORT + r" ::1 6"),
        cmd("L6 c2 ::1 5002 ft tt", None),
        cmd("L c2 127.0.0.1 5002 ft tt", None),
        cmd("U6 c3 127.0.0.1 5000 ft", None),
        cmd("U c4 ::1 5000 ft", None),
        cmd("Ul{v6} c5 ::1 5000 ft", None),
        cmd("U6l{v6} c6 ::1 5000 ft", None),
        cmd("Ul[::1] c7 ::1 5000 ft", None),
        cmd("U6r[::1] c8 ::1 5000 ft", None),
        cmd("U6 c9 [::1] 5000 ft", None),
        cmd("VF 20260306", "1"),
    ]


PROMPTS = {"pr.0": bytes(1600), "pr.8": bytes(800), "pr.96": bytes(800)}  # 200/100 ms


def write_prompts(tmp: Path) -> None:
    """The prompt files the play scenario names as ``{TMP}/pr``."""
    for name, data in PROMPTS.items():
        (tmp / name).write_bytes(data)


def play_steps() -> list[Step]:
    pr = "{TMP}/pr"
    return [
        cmd("U pl 127.0.0.1 {C1} ft", PORT_ADDR),
        cmd("L pl 127.0.0.1 {C2} ft tt", PORT_ADDR),
        cmd("U pl2 127.0.0.1 {C1} ft", PORT_ADDR),
        cmd("L pl2 127.0.0.1 {C2} ft tt", PORT_ADDR),
        cmd(f"Px pl {pr} 0 ft tt", "E17"),
        cmd(f"P2x pl {pr} 0 ft tt", "E17"),
        cmd(f"P+ pl {pr} 0 ft tt", "E17"),
        cmd(f"P- pl {pr} 0 ft tt", "E17"),
        cmd(f"P pl {pr} 0 nosuch", "E50"),
        cmd(f"P pl {pr} 0 ft;1 tt;1", "E50"),
        cmd(f"P pl {pr} session ft tt", "E35"),
        cmd(f"P0 pl {pr} session ft tt", "E35"),
        cmd("P pl {TMP}/nosuch 0 ft tt", "E60"),
        cmd(f"P pl {pr} 3,18 ft tt", "E60"),
        cmd(f"P pl {pr} abc ft tt", "E60"),
        cmd(f"P pl {pr} -1 ft tt", "E60"),
        cmd(f"P pl {pr} 96,0 ft tt", "0"),
        cmd(f"P pl {pr} 0,abc ft tt", "0"),
        cmd(f"P pl {pr} 08 ft tt", "0"),
        cmd(f"P3 pl {pr} 0 ft tt", "0"),
        cmd(f"P+2 pl {pr} 0 tt ft", "0"),
        cmd(f"P-1 pl {pr} 0 ft tt", "0"),
        cmd(f"P-2 pl {pr} 8 tt ft", "0"),
        cmd(f"P0 pl {pr} 0 ft tt", "0"),
        cmd(f"P pl {pr} 0 ft tt && S ttl=5", None),
        cmd(f"P99999999999 pl {pr} 0 ft tt", None),
        cmd("S pl ft tt", "0"),
        cmd("S pl tt ft", "0"),
        cmd("S pl ft tt", "0"),
        cmd("Sx pl ft tt", "E2"),
        cmd("S nosuch ft tt", "E50"),
        # the callee is muted while the caller hears a prompt; the caller is not
        cmd(f"P-1 pl2 {pr} 0 ft tt", "0"),
        Step("rtp", client=2, port="P3", count=3, ssrc=0x2222),
        Step("rtp", client=1, port="P4", count=2, ssrc=0x1111),
        sleep(0.3),
        cmd("Q pl2 ft tt", None),
        cmd("G npkts_discard npkts_relayed nplrs_created nplrs_destroyed", None),
        cmd("S pl2 ft tt", "0"),
        Step("rtp", client=2, port="P3", count=2, ssrc=0x2222),
        sleep(0.3),
        cmd("Q pl2 ft tt", None),
        cmd(f"P pl2 {pr} 96 ft tt", "0"),  # no packetizer: 0, no packets, still muted
        Step("rtp", client=2, port="P3", count=2, ssrc=0x2222),
        sleep(0.3),
        cmd("Q pl2 ft tt", None),
        cmd("D pl2 ft", "0"),
        cmd("G nplrs_created nplrs_destroyed", None),
    ]


def build_scenarios() -> list[Scenario]:
    basic = (
        version_steps()
        + framing_steps()
        + update_steps()
        + address_steps()
        + lookup_steps()
        + tag_steps()
        + delete_steps()
        + misc_command_steps()
        + size_steps()
    )
    return [
        Scenario("basic", basic),
        Scenario("udp-cookies", udp_cookie_steps(), transports=("udp",)),
        Scenario("unix-framing", unix_framing_steps(), transports=("unix",)),
        Scenario(
            "bridge",
            bridge_steps(),
            listen=["-l", "127.0.0.1/127.0.0.2", "-A", "192.0.2.1/192.0.2.2"],
        ),
        Scenario("notify", notify_steps(), extra_args=["-n", "unix:{TMP}/notify.sock"]),
        Scenario("record", record_steps(), extra_args=["-r", "{TMP}/rec"]),
        Scenario("media", media_steps(), transports=("unix",)),
        Scenario("play", play_steps(), transports=("unix",)),
        Scenario(
            "ipv6",
            ipv6_steps(),
            listen=["-l", "127.0.0.1=203.0.113.5", "-6", "v6@::1"],
            transports=("unix",),
        ),
        Scenario(
            "timeouts", timeout_steps(), extra_args=["-T", "3", "-W", "2"], transports=("unix",)
        ),
        Scenario("exhaust", exhaust_steps(), transports=("unix",), port_range=(47500, 47503)),
    ]


# --------------------------------------------------------------------------
# Rendering and normalisation
# --------------------------------------------------------------------------


def show(data: bytes) -> str:
    """Printable one-line form of raw bytes (escapes like Python bytes repr)."""
    text = repr(data)[2:-1]
    if len(text) > 160:
        text = f"{text[:100]}...({len(data)} bytes)...{text[-40:]}"
    return text


FLOAT_RE = re.compile(rb"(?<![\d.])\d+\.\d+(?![\d.])")
NUM_RE = re.compile(rb"(?<![\w.:])\d+(?![\w.:])")


class PortMapper:
    """Maps allocated relay ports to P1, P2... in order of first appearance."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self.labels: dict[int, str] = {}
        self.ports: dict[str, int] = {}

    def normalise(self, reply: bytes) -> bytes:
        def repl(match: re.Match[bytes]) -> bytes:
            value = int(match.group(0))
            if not self.low <= value <= self.high + 1:
                return match.group(0)
            label = self.labels.get(value)
            if label is None:
                label = f"P{len(self.labels) + 1}"
                self.labels[value] = label
                self.ports[label] = value
            return label.encode()

        return NUM_RE.sub(repl, FLOAT_RE.sub(b"<float>", reply))


def reply_body(reply: bytes, step: Step, cookie: str | None) -> str:
    """Reply text without the cookie and the final newline, for spec checks."""
    body = reply
    if cookie is not None and body.startswith(cookie.encode("latin-1") + b" "):
        body = body[len(cookie) + 1 :]
    if body.endswith(b"\n"):
        body = body[:-1]
    return body.decode("latin-1")


def ttl_positions(step: Step) -> set[int]:
    """Token indexes of a Q reply that hold a TTL (those may differ by one)."""
    if step.kind not in ("cmd", "raw"):
        return set()
    tokens = step.data.split()
    if step.kind == "raw" and tokens:
        tokens = tokens[1:]
    if not tokens or tokens[0][:1].upper() != b"Q":
        return set()
    names = tokens[3:] if len(tokens) > 3 else []
    names = names[: names.index(b"&&")] if b"&&" in names else names
    if not names:
        return {0}
    return {i for i, name in enumerate(names) if name == b"ttl"}


def same_reply(step: Step, a: bytes, b: bytes, cookie: str | None) -> bool:
    if a == b:
        return True
    positions = ttl_positions(step)
    if not positions:
        return False
    ta = reply_body(a, step, cookie).split(" ")
    tb = reply_body(b, step, cookie).split(" ")
    if len(ta) != len(tb) or a.endswith(b"\n") != b.endswith(b"\n"):
        return False
    for i, (x, y) in enumerate(zip(ta, tb, strict=True)):
        if x == y:
            continue
        if i not in positions:
            return False
        xv, yv = x.rpartition("=")[2], y.rpartition("=")[2]
        if x.rpartition("=")[0] != y.rpartition("=")[0]:
            return False
        if not (xv.isdigit() and yv.isdigit() and abs(int(xv) - int(yv)) <= 1):
            return False
    return True


# --------------------------------------------------------------------------
# Running a relay
# --------------------------------------------------------------------------


class RelayError(Exception):
    pass


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


LIVE_RELAYS: dict[int, subprocess.Popen[bytes]] = {}  # every relay still running, by PID


class Relay:
    """One relay process started for one scenario run."""

    def __init__(self, base_cmd: list[str], args: list[str], workdir: Path, log: Path) -> None:
        self.argv = base_cmd + args
        self.workdir = workdir
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ctl_sock: Path) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # pyrtpproxy in user space, like the reference (and the host's nftables
                # untouched), unless its command line asks for --kernel-forward
                env={"PYRTPPROXY_KERNEL_FORWARD": "off", **os.environ},
            )
        LIVE_RELAYS[self.proc.pid] = self.proc
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RelayError(f"relay exited with status {self.proc.returncode}")
            if ctl_sock.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(0.5)
                    try:
                        probe.connect(str(ctl_sock))
                    except OSError:
                        pass
                    else:
                        # give the UDP socket (bound in the same start-up step) a moment
                        time.sleep(0.1)
                        return
            time.sleep(0.05)
        raise RelayError("control socket did not come up within 10 s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            LIVE_RELAYS.pop(self.proc.pid, None)

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text("latin-1")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate one child by PID, escalating to SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)


def stop_all_relays() -> None:
    for proc in list(LIVE_RELAYS.values()):
        stop_process(proc)
    LIVE_RELAYS.clear()


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------


def unix_exchange(path: Path, data: bytes, timeout: float) -> bytes:
    """One command per connection: write once, read until the relay closes."""
    chunks: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            if data:
                s.sendall(data)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            else:
                chunks.append(b"<no EOF>")
        except TimeoutError:
            chunks.append(b"<timeout>" if chunks else NO_REPLY)
        except ConnectionResetError:
            chunks.append(b"<reset>")
        except BrokenPipeError:
            chunks.append(b"<broken pipe>")
        except OSError as exc:
            chunks.append(f"<{exc.strerror}>".encode())
    reply = b"".join(chunks)
    return reply if reply else NO_REPLY


class UdpClient:
    def __init__(self, port: int, timeout: float) -> None:
        self.addr = (LOOPBACK, port)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))

    def exchange(self, data: bytes, cookie: str | None) -> bytes:
        self.sock.sendto(data, self.addr)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return NO_REPLY
            self.sock.settimeout(left)
            try:
                reply, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                return NO_REPLY
            # drop late replies that belong to an earlier step
            if cookie is None or reply.startswith(cookie.encode("latin-1") + b" "):
                return reply

    def close(self) -> None:
        self.sock.close()


class MediaClients:
    """Local UDP sockets that play the two phones (and a copy target)."""

    def __init__(self, count: int = 3) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((LOOPBACK, 0))
            s.setblocking(False)
            self.socks.append(s)
        self.seq = 0

    def port(self, index: int) -> int:
        port: int = self.socks[index - 1].getsockname()[1]
        return port

    def send(self, step: Step, relay_port: int) -> None:
        sock = self.socks[step.client - 1]
        for _ in range(step.count):
            self.seq += 1
            if step.rtcp:
                packet = struct.pack("!BBHI", 0x80, 200, 6, step.ssrc) + bytes(20)
                dest = relay_port + 1
            else:
                header = struct.pack("!BBHII", 0x80, 0, self.seq, self.seq * 160, step.ssrc)
                packet = header + bytes(160)
                dest = relay_port
            sock.sendto(packet, (LOOPBACK, dest))
            time.sleep(0.02)

    def drain(self) -> None:
        for s in self.socks:
            with contextlib.suppress(BlockingIOError):
                for _ in range(1000):
                    s.recv(65536)

    def close(self) -> None:
        for s in self.socks:
            s.close()


# --------------------------------------------------------------------------
# Driving a scenario
# --------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    transport: str
    step: Step
    cookie: str | None
    reply: bytes  # normalised


@dataclass
class Context:
    tmp: Path
    port_min: int
    port_max: int
    timeout: float
    media: MediaClients
    sequential: bool


def substitute(data: bytes, ctx: Context, mapper: PortMapper) -> bytes:
    def repl(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode()
        if name == "TMP":
            return str(ctx.tmp).encode()
        if name.startswith("C"):
            return str(ctx.media.port(int(name[1:]))).encode()
        return str(mapper.ports.get(name, 0)).encode()

    return re.sub(rb"\{(TMP|C\d+|P\d+)\}", repl, data)


def relay_args(scn: Scenario, ctx: Context, ctl: Path, udp_port: int, pid: Path) -> list[str]:
    low, high = scn.port_range or (ctx.port_min, ctx.port_max)
    args = ["-f", "-F", "-s", f"unix:{ctl}", "-s", f"udp:{LOOPBACK}:{udp_port}"]
    # never "-p /dev/null": the reference unlink()s its pid file at exit
    args += ["-p", str(pid), "-d", "ERR", "-m", str(low), "-M", str(high)]
    if ctx.sequential:
        args.append("-b")  # sequential ports: no random port re-use between sessions
    args += scn.listen
    args += [a.replace("{TMP}", str(ctx.tmp)) for a in scn.extra_args]
    return args


def run_scenario(
    base_cmd: list[str],
    scn: Scenario,
    transport: str,
    ctx: Context,
    tag: str,
    results: list[Result],
) -> None:
    """Run one scenario on a fresh relay, appending to ``results`` as it goes."""
    low, high = scn.port_range or (ctx.port_min, ctx.port_max)
    mapper = PortMapper(low, high)
    ctl = ctx.tmp / "ctl.sock"
    pid = ctx.tmp / "relay.pid"
    rec = ctx.tmp / "rec"
    shutil.rmtree(rec, ignore_errors=True)
    rec.mkdir()
    for stale in (ctl, pid, ctx.tmp / "notify.sock"):
        stale.unlink(missing_ok=True)
    udp_port = free_udp_port()
    log = ctx.tmp / f"{tag}-{scn.name}-{transport}.log"
    relay = Relay(base_cmd, relay_args(scn, ctx, ctl, udp_port, pid), ctx.tmp, log)
    udp: UdpClient | None = None
    failure: bytes | None = None
    try:
        try:
            relay.start(ctl)
        except RelayError as exc:
            failure = f"<relay failed to start: {exc}>".encode()
            print(f"# {tag}: {scn.name}/{transport}: {exc}\n{relay.log_tail()}", file=sys.stderr)
        if transport == "udp":
            udp = UdpClient(udp_port, ctx.timeout)
        for index, step in enumerate(scn.steps):
            cookie: str | None = None
            if step.kind in ("cmd", "raw") and transport == "udp":
                if step.kind == "cmd":
                    cookie = step.cookie or f"c{index}"
                else:
                    first = step.data.split(maxsplit=1)
                    cookie = first[0].decode("latin-1") if first else None
            if failure is not None:
                results.append(Result(scn.name, transport, step, cookie, failure))
                continue
            reply = execute(step, transport, ctx, mapper, ctl, udp, cookie)
            if not relay.alive():
                code = relay.proc.returncode if relay.proc else None
                failure = f"<relay died, status {code}>".encode()
                reply = reply if reply != NO_REPLY else failure
            results.append(Result(scn.name, transport, step, cookie, mapper.normalise(reply)))
    finally:
        if udp is not None:
            udp.close()
        relay.stop()
        ctx.media.drain()


def execute(
    step: Step,
    transport: str,
    ctx: Context,
    mapper: PortMapper,
    ctl: Path,
    udp: UdpClient | None,
    cookie: str | None,
) -> bytes:
    if step.kind == "sleep":
        time.sleep(step.seconds)
        return b""
    if step.kind == "rtp":
        port = mapper.ports.get(step.port)
        if port is None:
            return f"<unknown port label {step.port}>".encode()
        ctx.media.send(step, port)
        return b""
    if step.kind == "files":
        names = sorted(p.name for p in (ctx.tmp / "rec").iterdir())
        return ("files: " + " ".join(names)).encode()
    data = substitute(step.data, ctx, mapper)
    if transport == "unix":
        return unix_exchange(ctl, data, ctx.timeout)
    assert udp is not None
    if step.kind == "cmd":
        assert cookie is not None
        data = cookie.encode("latin-1") + b" " + data
    return udp.exchange(data, cookie)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def spec_mismatch(result: Result) -> bool:
    step = result.step
    if step.expect is None or result.reply.startswith(b"<relay"):
        return False
    cookie = result.cookie if step.kind == "cmd" else None
    body = reply_body(result.reply, step, cookie)
    return re.fullmatch(step.expect, body, flags=re.DOTALL) is None


def where(result: Result) -> str:
    return f"{result.scenario}/{result.transport}"


def report_single(results: list[Result], out: Callable[[str], None]) -> None:
    mismatches: list[Result] = []
    current = ""
    for res in results:
        if where(res) != current:
            current = where(res)
            out(f"\n== {current}")
        if res.step.kind in ("sleep", "rtp"):
            out(f"{res.step.label()}")
            continue
        out(f"{res.step.label()} | {show(res.reply)}")
        if spec_mismatch(res):
            mismatches.append(res)
            out(f"    !! spec: expected /{res.step.expect}/")
    out(f"\n# {len(results)} steps, {len(mismatches)} replies differ from the spec expectations")
    for res in mismatches:
        out(f"#  {where(res)}: {res.step.label()} | {show(res.reply)} | spec /{res.step.expect}/")


PORT_LABEL_RE = re.compile(rb"(?<![\w])P\d+(?![\w])")


class PortPairing:
    """Pairs A's port labels with B's, so one extra allocation does not cascade.

    Labels are bound in order of first appearance in replies that have the
    same number of labels; B's reply is then rewritten with A's labels.
    """

    def __init__(self) -> None:
        self.a2b: dict[bytes, bytes] = {}
        self.b2a: dict[bytes, bytes] = {}

    def align(self, a: bytes, b: bytes) -> bytes:
        labels_a = PORT_LABEL_RE.findall(a)
        labels_b = PORT_LABEL_RE.findall(b)
        if len(labels_a) == len(labels_b):
            for la, lb in zip(labels_a, labels_b, strict=True):
                if la not in self.a2b and lb not in self.b2a:
                    self.a2b[la] = lb
                    self.b2a[lb] = la
        return PORT_LABEL_RE.sub(lambda m: self.b2a.get(m.group(0), b"?" + m.group(0)), b)


def report_diff(
    results_a: list[Result], results_b: list[Result], show_all: bool, out: Callable[[str], None]
) -> None:
    differ = 0
    compared = 0
    spec_a = spec_b = 0
    pairings: dict[str, PortPairing] = {}
    for ra, rb in zip(results_a, results_b, strict=True):
        if ra.step.kind in ("sleep", "rtp"):
            continue
        pairing = pairings.setdefault(where(ra), PortPairing())
        aligned = pairing.align(ra.reply, rb.reply)
        compared += 1
        spec_a += spec_mismatch(ra)
        spec_b += spec_mismatch(rb)
        same = same_reply(ra.step, ra.reply, aligned, ra.cookie)
        if not same:
            differ += 1
        if not same or show_all:
            mark = "" if same else "DIFF "
            out(f"{mark}{where(ra)}: {ra.step.label()} | {show(ra.reply)} | {show(aligned)}")
    out(f"\n# {compared} replies compared, {differ} differ")
    out(f"# spec expectation misses: A={spec_a} B={spec_b}")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def select(
    scenarios: list[Scenario], names: str | None, transports: str | None
) -> Iterator[tuple[Scenario, str]]:
    wanted = set(names.split(",")) if names else None
    kinds = set(transports.split(",")) if transports else None
    for scn in scenarios:
        if wanted is not None and scn.name not in wanted:
            continue
        for transport in scn.transports:
            if kinds is None or transport in kinds:
                yield scn, transport


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Diff the control-protocol replies of two rtpproxy-compatible relays.",
    )
    parser.add_argument("--a", required=True, help="command line of relay A (reference)")
    parser.add_argument("--b", help="command line of relay B (the one under test)")
    parser.add_argument("--only-a", action="store_true", help="run A alone, print all replies")
    parser.add_argument("--all", action="store_true", help="in diff mode print equal replies too")
    parser.add_argument("--scenarios", help="comma-separated scenario names (default: all)")
    parser.add_argument("--transports", help="comma-separated: unix,udp (default: both)")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    parser.add_argument("--timeout", type=float, default=1.5, help="reply timeout, seconds")
    parser.add_argument("--port-min", type=int, default=DEFAULT_PORT_MIN)
    parser.add_argument("--port-max", type=int, default=DEFAULT_PORT_MAX)
    parser.add_argument(
        "--random-ports",
        action="store_true",
        help="do not pass -b (random allocation makes port labels differ on re-use)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (relay logs)")
    args = parser.parse_args(argv)
    if not args.only_a and not args.b and not args.list:
        parser.error("--b is required unless --only-a or --list is given")
    return args


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = build_scenarios()
    if args.list:
        for scn in scenarios:
            print(f"{scn.name}: {len(scn.steps)} steps, transports {','.join(scn.transports)}")
        return 0
    signal.signal(signal.SIGTERM, on_sigterm)
    out: Callable[[str], None] = print
    tmp = Path(tempfile.mkdtemp(prefix="compat_diff_"))
    write_prompts(tmp)
    media = MediaClients()
    ctx = Context(tmp, args.port_min, args.port_max, args.timeout, media, not args.random_ports)
    relays = [("A", shlex.split(args.a))]
    if not args.only_a:
        relays.append(("B", shlex.split(args.b)))
    collected: dict[str, list[Result]] = {tag: [] for tag, _ in relays}
    try:
        for scn, transport in select(scenarios, args.scenarios, args.transports):
            for tag, base in relays:
                print(f"# running {tag} {scn.name}/{transport}", file=sys.stderr)
                run_scenario(base, scn, transport, ctx, tag, collected[tag])
    except KeyboardInterrupt:
        print("# interrupted; reporting what was collected", file=sys.stderr)
    except Exception as exc:  # report, do not fail
        print(f"# error: {exc!r}; reporting what was collected", file=sys.stderr)
    finally:
        stop_all_relays()
        media.close()
        if args.keep_tmp:
            print(f"# temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out(f"# A: {args.a}")
    if args.only_a:
        report_single(collected["A"], out)
    else:
        out(f"# B: {args.b}")
        count = min(len(collected["A"]), len(collected["B"]))
        report_diff(collected["A"][:count], collected["B"][:count], args.all, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
