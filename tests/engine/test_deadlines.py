"""The deadline heap against a brute-force reading of the same rules: whatever commands,
packets and timer runs happen, a session expires exactly when its timer says, and
``get_timer`` never lets one pass unnoticed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.events import Outbox
from pyrtpproxy.engine.session import Session
from pyrtpproxy.engine.timers import Deadlines

TTL, SETUP_TTL = 3, 5

step = st.tuples(
    st.sampled_from(["reset", "packet", "timer"]),
    st.integers(0, 3),  # which session
    st.integers(0, 1),  # which leg
    st.floats(0.0, 2.0),  # how long after the previous step
)


def _expiry(session: Session, independent: bool) -> float:
    legs = [max(leg.expires_at, leg.active_at + (TTL + 1)) for leg in session.legs]
    return min(legs) if independent else max(legs)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(step, max_size=60))
def test_sessions_expire_exactly_when_their_timer_runs_out(
    independent: bool, steps: list[tuple[str, int, int, float]]
) -> None:
    deadlines = Deadlines(TTL, SETUP_TTL, independent)
    outbox = Outbox(lambda event: None)
    sessions = [Session(b"c%d" % i, b"t", 0.0, outbox) for i in range(4)]
    for session in sessions:
        session.reset_timer(0.0, SETUP_TTL)
        deadlines.file(session)
    alive = set(range(4))
    now = 0.0
    for action, index, side, delay in steps:
        now += delay
        session = sessions[index]
        if action == "timer":
            due = deadlines.next_deadline()
            expired = {sessions.index(s) for s in deadlines.due(now)}
            should = {i for i in alive if _expiry(sessions[i], independent) <= now}
            assert expired == should
            if should:
                assert due is not None and due <= now  # the app's timer would have fired
            alive -= expired
            for i in expired:
                sessions[i].ended = True
        elif index in alive:
            if action == "reset":
                session.reset_timer(now, TTL)
                deadlines.file(session)
            else:
                session.legs[side].rtp.seen_at = now
        upcoming = deadlines.next_deadline()
        if alive:
            earliest = min(_expiry(sessions[i], independent) for i in alive)
            # never later than the true earliest expiry (no timeout is missed); packets
            # only move expiries later, so it may be early until the next timer run
            assert upcoming is not None and upcoming <= earliest
            if action == "timer":
                assert upcoming == earliest


def test_ended_sessions_do_not_pile_up_in_the_heap() -> None:
    deadlines = Deadlines(TTL, SETUP_TTL, independent=False)
    outbox = Outbox(lambda event: None)
    keep = Session(b"keep", b"t", 0.0, outbox)
    keep.reset_timer(0.0, TTL)
    deadlines.file(keep)
    for i in range(10_000):  # a call rate far above 1/TTL: all end before any deadline
        session = Session(b"c%d" % i, b"t", 0.0, outbox)
        session.reset_timer(i / 1000, TTL)
        deadlines.file(session)
        deadlines.forget(session)
    assert len(deadlines) <= 2 * 1024 + 2
    assert deadlines.next_deadline() == TTL + 1  # the live one is still filed
