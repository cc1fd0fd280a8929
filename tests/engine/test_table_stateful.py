"""The session table against an independent model of protocol.md §4 and §5.3 to §5.6."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from .support import make_engine, run

CALLS = st.sampled_from([b"c1", b"c2"])
TAGS = st.sampled_from([b"t1", b"t2", b"t1;1", b"t2;1", b"t1;2", b"t3"])
OPT_TAG = st.none() | TAGS
TTL, SETUP_TTL = 60, 30
A, B = 0, 1


@dataclass
class ModelSession:
    creator: bytes
    ports: list[int | None] = field(default_factory=lambda: [None, None])
    strong: bool = False
    weak: list[bool] = field(default_factory=lambda: [False, False])

    @property
    def complete(self) -> bool:
        return None not in self.ports

    @property
    def persistent(self) -> bool:
        return self.strong or any(self.weak)


def _suffix(tag: bytes) -> bytes:
    pos = tag.rfind(b";")
    return tag[pos:] if pos >= 0 else b""


def _prefix_match(creator: bytes, tag: bytes) -> bool:
    return creator == tag or creator.startswith(tag + b";")


class TableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = make_engine(ttl=TTL, setup_ttl=SETUP_TTL, port_min=30000, port_max=30400)
        # per call-id, sessions in creation order (lookups scan in that order)
        self.calls: dict[bytes, list[ModelSession]] = {}
        self.created = 0

    # --- the model ------------------------------------------------------------------

    def find(self, call: bytes, tag1: bytes, tag2: bytes | None) -> tuple[ModelSession, int] | None:
        sessions = self.calls.get(call, [])
        for s in sessions:
            if s.creator == tag1:
                return s, B
        if tag2 is not None:
            for s in sessions:
                if s.creator in (tag2, tag2 + _suffix(tag1)):
                    return s, A
        return None

    def live_ports(self) -> list[int]:
        return [p for ss in self.calls.values() for s in ss for p in s.ports if p is not None]

    def check_port_reply(self, reply: bytes, session: ModelSession, leg: int) -> None:
        m = re.fullmatch(rb"(\d+) 127\.0\.0\.1", reply)
        assert m is not None, reply
        port = int(m.group(1))
        if session.ports[leg] is None:
            assert port not in self.live_ports(), "port handed out twice"
            session.ports[leg] = port
        else:
            assert port == session.ports[leg]

    # --- rules ----------------------------------------------------------------------

    @rule(call=CALLS, tag1=TAGS, tag2=OPT_TAG, weak=st.booleans())
    def update(self, call: bytes, tag1: bytes, tag2: bytes | None, weak: bool) -> None:
        word = b"Uw" if weak else b"U"
        cmd = b" ".join([word, call, b"127.0.0.1", b"5000", tag1] + ([tag2] if tag2 else []))
        reply = run(self.engine, cmd)
        found = self.find(call, tag1, tag2)
        if found is None:
            session = ModelSession(tag1)
            self.calls.setdefault(call, []).append(session)
            self.created += 1
            reply_leg = A
        else:
            session, side = found
            reply_leg = 1 - side
        self.check_port_reply(reply, session, reply_leg)
        if weak:
            session.weak[reply_leg] = True
        else:
            session.strong = True

    @rule(call=CALLS, tag1=TAGS, tag2=TAGS, weak=st.booleans())
    def lookup(self, call: bytes, tag1: bytes, tag2: bytes, weak: bool) -> None:
        word = b"Lw" if weak else b"L"
        reply = run(self.engine, b" ".join([word, call, b"127.0.0.1", b"5002", tag1, tag2]))
        found = self.find(call, tag1, tag2)
        if found is None:
            assert reply == b"0"
            return
        session, side = found
        self.check_port_reply(reply, session, side)
        if weak:
            session.weak[side] = True
        else:
            session.strong = True

    @rule(call=CALLS, tag1=TAGS, tag2=OPT_TAG, weak=st.booleans())
    def delete(self, call: bytes, tag1: bytes, tag2: bytes | None, weak: bool) -> None:
        word = b"Dw" if weak else b"D"
        reply = run(self.engine, b" ".join([word, call, tag1] + ([tag2] if tag2 else [])))
        matched = False
        for s in list(self.calls.get(call, [])):
            if _prefix_match(s.creator, tag1):
                leg = B
            elif tag2 is not None and _prefix_match(s.creator, tag2):
                leg = A
            else:
                continue
            matched = True
            if weak:
                s.weak[leg] = False
            else:
                s.strong = False
            if not s.persistent:
                self.calls[call].remove(s)
        if not self.calls.get(call, True):
            del self.calls[call]
        assert reply == (b"0" if matched else b"E50")

    @rule(call=CALLS, tag1=TAGS, tag2=OPT_TAG)
    def query(self, call: bytes, tag1: bytes, tag2: bytes | None) -> None:
        reply = run(self.engine, b" ".join([b"Q", call, tag1] + ([tag2] if tag2 else [])))
        found = self.find(call, tag1, tag2)
        if found is None:
            assert reply == b"E50"
        else:
            ttl = TTL if found[0].complete else SETUP_TTL
            assert reply == b"%d 0 0 0 0" % ttl

    @rule()
    def delete_all(self) -> None:
        assert run(self.engine, b"X") == b"0"
        self.calls.clear()

    # --- invariants -----------------------------------------------------------------

    @invariant()
    def session_counts_agree(self) -> None:
        live = sum(len(ss) for ss in self.calls.values())
        info = run(self.engine, b"I")
        assert b"\nactive sessions: %d\n" % live in info, info
        assert b"\nactive streams: %d\n" % (2 * live) in info, info
        created, destroyed, complete = (
            int(v)
            for v in run(self.engine, b"G nsess_created nsess_destroyed nsess_complete").split()
        )
        assert created == self.created
        assert destroyed == self.created - live
        assert len(self.engine.table) == live
        assert complete >= sum(s.complete for ss in self.calls.values() for s in ss)

    @invariant()
    def ports_unique_and_accounted(self) -> None:
        ports = self.live_ports()
        assert len(ports) == len(set(ports))
        engine_ports = [leg.port for s in self.engine.table for leg in s.legs if leg.port]
        assert sorted(engine_ports) == sorted(ports)
        assert self.engine.ports.free == self.engine.ports.capacity - len(ports)


TableMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
test_session_table = TableMachine.TestCase
