"""Idle and setup timers as deadlines (relay-behaviour.md §5); no per-second sweep.

A leg's timer runs from the last U/L that touched the session (``Leg.expires_at``,
``-W`` before completion, ``-T`` after) or from the last packet its party sent
(``Stream.seen_at`` plus ``-T``), whichever is later; rtpproxy's once-a-second sweeper
lets an idle session live ``T + 1`` seconds, so both include the extra second. By
default one timer covers both legs (media either way keeps the session); with ``-i``
the session expires when either leg's runs out.

Sessions are filed in a heap under a deadline that is never later than their true
expiry; packets only move the true expiry later, so :meth:`Deadlines.due` re-files a
session that turns out to be alive instead of touching it per packet.
"""

from __future__ import annotations

import heapq
import itertools
import math

from .session import Leg, Session

UNFILED = float("inf")


class Deadlines:
    """When each session expires, and which have expired."""

    def __init__(self, ttl: int, independent: bool) -> None:
        self._ttl = ttl
        self._independent = independent
        self._heap: list[tuple[float, int, Session]] = []
        self._order = itertools.count()  # ties: first filed, first out

    def _leg_expiry(self, leg: Leg) -> float:
        return max(leg.expires_at, leg.active_at + self._ttl + 1)

    def expiry(self, session: Session) -> float:
        """When ``session`` times out unless something happens before."""
        a, b = (self._leg_expiry(leg) for leg in session.legs)
        return min(a, b) if self._independent else max(a, b)

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
            session.timer_at = expiry
            heapq.heappush(self._heap, (expiry, next(self._order), session))

    def forget(self, session: Session) -> None:
        """``session`` ended: its heap entries are stale from now on."""
        session.timer_at = UNFILED

    def next_deadline(self) -> float | None:
        """The earliest expiry of any session, or None when there is none."""
        heap = self._heap
        while heap:
            deadline, _, session = heap[0]
            if deadline != session.timer_at:
                heapq.heappop(heap)  # stale: re-filed earlier, or ended
                continue
            expiry = self.expiry(session)
            if expiry <= deadline:
                return deadline
            session.timer_at = expiry  # packets moved it later: re-file, look again
            heapq.heapreplace(heap, (expiry, next(self._order), session))
        return None

    def due(self, now: float) -> list[Session]:
        """Sessions that have expired by ``now``; those still alive are re-filed."""
        heap = self._heap
        expired: list[Session] = []
        while heap and heap[0][0] <= now:
            deadline, _, session = heapq.heappop(heap)
            if deadline != session.timer_at:
                continue
            expiry = self.expiry(session)
            if expiry <= now:
                session.timer_at = UNFILED
                expired.append(session)
            else:
                session.timer_at = expiry
                heapq.heappush(heap, (expiry, next(self._order), session))
        return expired
