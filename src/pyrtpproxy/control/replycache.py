"""The UDP reply cache (protocol.md §1.4): a retransmitted command gets the reply it got
the first time instead of running again.

Every reply is kept at least ``ttl`` seconds, at most ``limit`` replies in all (the
oldest go first). Replies are filed in one-second buckets rather than each with its own
timestamp: at a few thousand commands a second the cache holds a hundred thousand
replies, and an entry then costs its dict slot and a list slot, not also a timestamp and
an ordered-dict node.
"""

from __future__ import annotations

import math
from collections import deque


class ReplyCache:
    """Replies by cookie, for at least ``ttl`` seconds, at most ``limit`` of them."""

    __slots__ = ("_buckets", "_replies", "limit", "ttl")

    def __init__(self, ttl: float, limit: int) -> None:
        self.ttl = ttl
        self.limit = limit
        self._replies: dict[bytes, bytes] = {}
        # (second, cookies stored in it), oldest first
        self._buckets: deque[tuple[int, deque[bytes]]] = deque()

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, cookie: bytes, now: float) -> bytes | None:
        """The reply ``cookie`` got, if it is still kept at ``now``."""
        self._expire(now)
        return self._replies.get(cookie)

    def put(self, cookie: bytes, reply: bytes, now: float) -> None:
        """Keep ``reply`` for ``cookie`` from ``now`` on (a cookie not kept now)."""
        second = math.floor(now)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != second:
            buckets.append((second, deque()))
        buckets[-1][1].append(cookie)
        replies = self._replies
        replies[cookie] = reply
        if len(replies) > self.limit:
            oldest = buckets[0][1]
            del replies[oldest.popleft()]
            if not oldest:
                buckets.popleft()

    def _expire(self, now: float) -> None:
        """Drop every bucket whose newest possible entry is ``ttl`` old."""
        buckets, replies, ttl = self._buckets, self._replies, self.ttl
        while buckets and now - (buckets[0][0] + 1) >= ttl:
            for cookie in buckets.popleft()[1]:
                del replies[cookie]
