"""Sessions exported from one engine and restored into another (``--state-file``): the
same answers to Q and L, the same timers (on the new engine's clock), the ports taken,
the taps back; a session whose port cannot be had is skipped, the others restored.
The journal's JSON (pyrtpproxy.state) sits between the two, with a wall clock that
moved on."""

from __future__ import annotations

from pyrtpproxy.engine.engine import Engine
from pyrtpproxy.engine.events import LegOpened, PortsReleased, TapStarted
from pyrtpproxy.engine.persist import SessionState
from pyrtpproxy.engine.session import Side
from pyrtpproxy.engine.taps import RecordingPolicy, UdpCopy
from pyrtpproxy.state import decode, encode

from .support import FakeHost, expire, harness, make_engine, rtp, run

WRITTEN_AT = 1_700_000_000.0  # the wall clock when the old relay wrote its journal


def _through_journal(engine: Engine, now: float, wall_later: float) -> list[SessionState]:
    """Export at ``now``; read back ``wall_later`` seconds of wall clock afterwards."""
    data = encode(engine.export_sessions(now), WRITTEN_AT)
    decoded = decode(data, WRITTEN_AT + wall_later)
    assert decoded.bad_entries == []
    return decoded.sessions


def _old_engine() -> Engine:
    engine = make_engine(
        ttl=30, notify_targets=("unix:/run/n.sock",), recording=RecordingPolicy(), seed=3
    )
    assert run(engine, b"U c1 127.0.0.1 5000 ft unix:/run/n.sock note", now=100.0) != b"E"
    run(engine, b"L c1 127.0.0.1 5002 ft tt && S ttl=20", now=101.0)
    session = next(iter(engine.table))
    # the caller's packets from a NAT-remapped port latch leg B
    stream = session.legs[Side.B].rtp
    stream.receive(rtp(7), ("127.0.0.1", 40000), 102.0)
    assert stream.latched and stream.remote == ("127.0.0.1", 40000)
    assert run(engine, b"R c1 ft tt", now=103.0) == b"0"
    run(engine, b"U c2 127.0.0.1 6000 ft", now=103.0)  # incomplete: one port
    return engine


def test_restored_sessions_answer_as_before() -> None:
    old = _old_engine()
    q_before = run(old, b"Q c1 ft tt", now=104.0)
    states = _through_journal(old, 104.0, wall_later=2.0)  # down for two seconds
    new = make_engine(
        ttl=30, notify_targets=("unix:/run/n.sock",), recording=RecordingPolicy(), seed=9
    )
    restored = new.restore(states, now=5.0)  # a new process: its clock starts anew
    assert (restored.restored, restored.skipped) == (2, ())
    opened = [e for e in restored.events if isinstance(e, LegOpened)]
    old_ports = sorted(leg.port for s in old.table for leg in s.legs if leg.port)
    assert sorted(e.port for e in opened) == old_ports
    assert all(new.ports.in_use(port) for port in old_ports)
    (tap,) = [e for e in restored.events if isinstance(e, TapStarted)]
    assert tap.leg.side is Side.B and tap.leg.session.call_id == b"c1"
    # two seconds later on the wall clock: Q's ttl is two seconds less, counts kept
    ttl, *counts = run(new, b"Q c1 ft tt", now=5.0).split()
    old_ttl, *old_counts = q_before.split()
    assert (int(ttl), counts) == (int(old_ttl) - 2, old_counts)
    session = next(s for s in new.table if s.call_id == b"c1")
    stream = session.legs[Side.B].rtp
    assert stream.latched and stream.remote == ("127.0.0.1", 40000)
    assert stream.settled(("127.0.0.1", 40000)) is False  # the recording sees every packet
    # Kamailio's L for the call gets the same port; a new call gets another one
    reply = run(new, b"L c1 127.0.0.1 5002 ft tt", now=6.0)
    assert int(reply.split()[0]) == session.legs[Side.B].port
    fresh = int(run(new, b"U c3 127.0.0.1 7000 ft", now=6.0).split()[0])
    assert fresh not in old_ports


def test_timers_and_notification_continue() -> None:
    old = _old_engine()
    states = _through_journal(old, 104.0, wall_later=10.0)
    new = make_engine(ttl=30, notify_targets=("unix:/run/n.sock",), recording=RecordingPolicy())
    new.restore(states, now=0.0)
    # && S ttl=20 at 101 and the packet at 102: expiry at 102 + 21 = 123 on the old clock,
    # 123 - 104 - 10 = 9 s after the restore
    assert expire(new, 8.9) == []
    (note,) = expire(new, 9.0)
    assert (note.tag, note.call_id) == (b"note", b"c1")


def test_a_busy_port_skips_that_session_only() -> None:
    old = _old_engine()
    states = _through_journal(old, 104.0, wall_later=0.0)
    c1 = next(s for s in old.table if s.call_id == b"c1")
    busy = c1.legs[Side.B].port
    new = make_engine(ttl=30, host=FakeHost(busy={busy}), recording=RecordingPolicy())
    restored = new.restore(states, now=0.0)
    assert restored.restored == 1
    (skipped,) = restored.skipped
    assert skipped.call_id == b"c1" and str(busy) in skipped.reason
    # leg A's pair, bound before leg B's failed, is given back and closed
    other, local = c1.legs[Side.A].port, c1.legs[Side.A].local
    assert local is not None and PortsReleased(local, other) in restored.events
    assert not new.ports.in_use(other)
    assert [s.call_id for s in new.table] == [b"c2"]


def test_ports_outside_the_range_and_duplicates_are_skipped() -> None:
    old = _old_engine()
    states = _through_journal(old, 104.0, wall_later=0.0)
    narrow = make_engine(port_min=20000, port_max=20010)
    assert narrow.restore(states, now=0.0).restored == 0
    new = make_engine()
    assert new.restore(states, now=0.0).restored == 2
    again = new.restore(states, now=0.0)
    assert again.restored == 0 and len(again.skipped) == 2
    assert "exists already" in again.skipped[0].reason


def test_a_copy_gets_its_port_pair_back() -> None:
    engine = make_engine(host=FakeHost(routes={"127.0.0.1": "127.0.0.1"}))
    run(engine, b"U c1 127.0.0.1 5000 ft", now=0.0)
    run(engine, b"L c1 127.0.0.1 5002 ft tt", now=0.0)
    reply = run(engine, b"Cp c1 udp:127.0.0.1:9000 ft tt", now=0.0)
    copy_port = int(reply.split()[0])
    new = make_engine(host=FakeHost(routes={"127.0.0.1": "127.0.0.1"}))
    restored = new.restore(_through_journal(engine, 0.0, 0.0), now=0.0)
    (tap,) = [e for e in restored.events if isinstance(e, TapStarted)]
    assert isinstance(tap.tap, UdpCopy) and tap.tap.port == copy_port
    assert new.ports.in_use(copy_port)
    assert copy_port in harness(new).host.bound
