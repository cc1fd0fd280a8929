"""The UDP reply cache against its contract (protocol.md §1.4): a reply is kept at least
the TTL and at most one second more, never more than the limit, the oldest dropped first."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.control.replycache import ReplyCache

TTL = 35.0
LIMIT = 20

steps = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=12.0), st.booleans(), st.integers(0, 60)),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, start=st.floats(min_value=0.0, max_value=1e6))
def test_replies_are_kept_for_the_ttl_and_bounded(
    steps: list[tuple[float, bool, int]], start: float
) -> None:
    cache = ReplyCache(TTL, LIMIT)
    now = start
    stored: list[tuple[bytes, float]] = []  # every put, in order
    for advance, put, probe in steps:
        now += advance
        if put:
            cookie = b"k%d" % len(stored)
            cache.put(cookie, b"r" + cookie, now)
            stored.append((cookie, now))
        if stored:
            index = probe % len(stored)
            cookie, at = stored[index]
            got = cache.get(cookie, now)
            newer = len(stored) - 1 - index  # puts after it: the limit drops the oldest
            if now - at < TTL and newer < LIMIT:
                assert got == b"r" + cookie
            if now - at >= TTL + 1 or newer >= LIMIT:
                assert got is None
        assert len(cache) <= LIMIT


def test_a_reply_lives_between_the_ttl_and_one_second_more() -> None:
    cache = ReplyCache(TTL, LIMIT)
    cache.put(b"a", b"ra", 100.5)
    assert cache.get(b"a", 100.5 + TTL - 0.01) == b"ra"
    assert cache.get(b"a", 101.0 + TTL) is None  # the whole second 100 is TTL old
    cache.put(b"a", b"again", 200.0)  # expired, so the command ran again
    assert cache.get(b"a", 200.0) == b"again"
