"""Hypothesis drives the command path in-process with the fuzzer's vocabulary: whatever
the bytes, the reply is one of the protocol's forms and never an internal error.

The same checks as benchmarks/fuzz_control.py against a live relay, here on the real
processor and engine with a fake host and clock, where hypothesis can shrink a failure
to its smallest command.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.support import FakeClock, make_engine
from pyrtpproxy.control.processor import CommandProcessor
from pyrtpproxy.engine.engine import LOCAL_REQUEST

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fuzz_control

WORDS = [
    b"U", b"Ua", b"Uc0,8", b"Uz20", b"U6", b"Un", b"Uie", b"Ulx", b"L", b"Lw", b"D", b"Dw",
    b"Q", b"Qv", b"R", b"Rs", b"N", b"Na", b"C", b"Cp", b"P1", b"S", b"V", b"VF", b"I",
    b"Il", b"G", b"Gv", b"X", b"Zsessions", b"&&",
]  # fmt: skip
TOKENS = [
    *fuzz_control.CALL_IDS,
    *fuzz_control.TAGS,
    *fuzz_control.ADDRESSES,
    *fuzz_control.PORTS,
    *fuzz_control.NOTIFY,
    *fuzz_control.NOTIFY_TAGS,
    *fuzz_control.COPY_TARGETS,
    *fuzz_control.COUNTER_NAMES,
    b"&&",
    b"ttl=5",
]
commands = st.one_of(
    st.builds(
        lambda word, rest: b" ".join([word, *rest]),
        st.sampled_from(WORDS),
        st.lists(st.sampled_from(TOKENS), max_size=26),
    ),
    st.binary(max_size=200),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(commands, min_size=1, max_size=8))
def test_every_reply_has_a_protocol_form(batch: list[bytes]) -> None:
    processor = CommandProcessor(make_engine(port_min=40000, port_max=40019), FakeClock(1.0))
    for command in batch:
        reply = processor.handle(command, LOCAL_REQUEST)
        assert reply.endswith(b"\n")
        body = reply[:-1]
        assert fuzz_control.check_reply(command, body) is None, (command, body)
        assert body != b"E89", command
