"""Idle and setup timers as deadlines (relay-behaviour.md §5); no per-second sweep.

A leg's timer runs from the last U/L that touched the session (``Leg.expires_at``,
``-W`` before completion, ``-T`` after) or from the last packet its party sent
(``Stream.seen_at`` plus ``-T``), whichever is later; rtpproxy's once-a-second sweeper
lets an idle session live ``T + 1`` seconds, so both include the extra second. By
default one timer covers both legs (media either way keeps the session); with ``-i``
the session expires when either leg's runs out.

Sessions are filed in a heap under a deadline that is never later than their true
expiry; packets only move the true expiry later, so :meth:`Deadlines.due` re-files a
session that turns out to be alive instead of touching it per packet. An entry that is
no longer a session's (re-filed earlier, or the session ended) lets go of the session at
once and is dropped when it comes up: an ended session is freed with its last reference
elsewhere, not kept alive by the heap until then.
"""

from __future__ import annotations

import heapq
import itertools
import math

from .session import Leg, Session, TimerEntry

COMPACT_AT = 1024  # stale entries tolerated before the heap is rebuilt
SESSION = 2  # TimerEntry: [deadline, order, session or None once stale]


class Deadlines:
    """When each session expires, and which have expired."""

    def __init__(self, ttl: int, setup_ttl: int, independent: bool) -> None:
        self.ttl = ttl
        self.setup_ttl = setup_ttl
        self._idle_life = ttl + 1  # how long after its last packet an idle leg lives
        self._independent = independent
        self._heap: list[TimerEntry] = []
        self._order = itertools.count()  # ties: first filed, first out
        self._stale = 0  # heap entries of ended or re-filed sessions, not yet popped
        self._next: float | None = None  # next_deadline's answer while nothing was filed
        self._moved = False  # something was filed, forgotten or expired since

    def full(self, session: Session) -> int:
        """The timer a U/L gives ``session``: ``-T`` once complete, ``-W`` before (a leg's
        ``&& S ttl=N`` overrides both for that leg)."""
        return self.ttl if session.complete else self.setup_ttl

    def _leg_expiry(self, leg: Leg) -> float:
        rtp, rtcp = leg.rtp.seen_at, leg.rtcp.seen_at
        life = self._idle_life if leg.ttl is None else leg.ttl + 1
        by_media = (rtp if rtp > rtcp else rtcp) + life
        return by_media if by_media > leg.expires_at else leg.expires_at

    def expiry(self, session: Session) -> float:
        """When ``session`` times out unless something happens before."""
        a, b = session.legs
        first, second = self._leg_expiry(a), self._leg_expiry(b)
        if self._independent:
            return first if first < second else second
        return first if first > second else second

    def remaining(self, session: Session, now: float) -> int:
        """Whole seconds left, as ``Q`` reports ``ttl`` (the last second counts as 0)."""
        return max(0, math.ceil(round(self.expiry(session) - now, 6)) - 1)

    def leg_remaining(self, leg: Leg, now: float) -> int:
        """Whole seconds left on one leg's timer (with ``-i`` its own, otherwise the
        session's, which both legs share)."""
        if not self._independent:
            return self.remaining(leg.session, now)
        return max(0, math.ceil(round(self._leg_expiry(leg) - now, 6)) - 1)

    def file(self, session: Session) -> None:
        """After a U/L reset ``session``'s timer: file it under its expiry if that is
        earlier than where it is filed now (later expiries are found lazily)."""
        expiry = self.expiry(session)
        if expiry < session.timer_at:
            self._drop_entry(session)
            self._push(expiry, session)
            self._moved = True

    def forget(self, session: Session) -> None:
        """``session`` ended: its heap entries are stale from now on."""
        if self._drop_entry(session):
            self._moved = True
            if self._stale > COMPACT_AT and 2 * self._stale > len(self._heap):
                self._compact()

    def _push(self, expiry: float, session: Session) -> None:
        entry: TimerEntry = [expiry, next(self._order), session]
        session.timer_entry = entry
        heapq.heappush(self._heap, entry)

    def _drop_entry(self, session: Session) -> bool:
        """Make the session's entry stale (it stays in the heap until it comes up)."""
        entry = session.timer_entry
        if entry is None:
            return False
        entry[SESSION] = None
        session.timer_entry = None
        self._stale += 1
        return True

    def _compact(self) -> None:
        """Drop stale entries: they hold no session any more, but at a high call rate
        they would outnumber the live ones and slow every push and pop."""
        self._heap = [entry for entry in self._heap if entry[SESSION] is not None]
        heapq.heapify(self._heap)
        self._stale = 0

    def __len__(self) -> int:
        """Entries in the heap, stale ones included (for tests and metrics)."""
        return len(self._heap)

    def next_deadline(self) -> float | None:
        """The earliest expiry of any session, or None when there is none. Packets only
        move expiries later, so until something is filed, forgotten or expired, the
        last answer stands (at worst a little early: :meth:`due` then re-files)."""
        if not self._moved:
            return self._next
        self._moved = False
        self._next = self._earliest()
        return self._next

    def _earliest(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, session = heap[0]
            if session is None:
                heapq.heappop(heap)  # stale: re-filed earlier, or ended
                self._stale -= 1
                continue
            expiry = self.expiry(session)
            if expiry <= deadline:
                return float(deadline)
            heapq.heappop(heap)  # packets moved it later: re-file, look again
            self._push(expiry, session)
        return None

    def due(self, now: float) -> list[Session]:
        """Sessions that have expired by ``now``; those still alive are re-filed."""
        heap = self._heap
        self._moved = True
        expired: list[Session] = []
        while heap and heap[0][0] <= now:
            session = heapq.heappop(heap)[SESSION]
            if session is None:
                self._stale -= 1
                continue
            expiry = self.expiry(session)
            if expiry <= now:
                session.timer_entry = None
                expired.append(session)
            else:
                self._push(expiry, session)
        return expired
