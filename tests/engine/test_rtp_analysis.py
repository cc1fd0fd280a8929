"""RTP sequence analysis behind Q's rtpa_* counters (RFC 3550 A.1/A.8 style)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.rtp import RtpAnalysis, rtp_header

from .support import rtp


def feed(seqs: list[int], ssrc: int = 1, start: float = 0.0) -> RtpAnalysis:
    a = RtpAnalysis()
    for i, seq in enumerate(seqs):
        a.feed(rtp(seq, ssrc=ssrc), start + 0.02 * i)
    return a


def counts(a: RtpAnalysis) -> tuple[int, int, int, int, int]:
    return a.expected, a.received, a.lost, a.dups, a.parse_errors


def test_header() -> None:
    assert rtp_header(rtp(7, ssrc=9, ts=123, pt=8)) == (8, 7, 123, 9)
    assert rtp_header(b"\x80" * 11) is None
    assert rtp_header(b"\x40" + bytes(11)) is None  # version 1


def test_in_order() -> None:
    assert counts(feed(list(range(100, 110)))) == (10, 10, 0, 0, 0)


def test_loss() -> None:
    assert counts(feed([1, 2, 5, 6])) == (6, 4, 2, 0, 0)
    assert counts(feed([1, 3])) == (3, 2, 1, 0, 0)  # the Q sample: nsent=3 nrcvd=2 nlost=1


def test_duplicates() -> None:
    assert counts(feed([1, 2, 2, 3, 3, 3])) == (3, 3, 0, 3, 0)
    assert counts(feed([1, 2, 3, 2])) == (3, 3, 0, 1, 0)  # late duplicate


def test_reordering_is_not_loss() -> None:
    assert counts(feed([1, 3, 2, 4])) == (4, 4, 0, 0, 0)


def test_late_packets_within_the_misorder_limit() -> None:
    seqs = list(range(1000, 1100))
    seqs.remove(1005)
    late = [*seqs, 1005]  # 94 behind: late, not lost
    assert counts(feed(late)) == (100, 100, 0, 0, 0)
    assert counts(feed([*late, 1005, 1010])) == (100, 100, 0, 2, 0)  # late duplicates


def test_late_duplicates_after_long_in_order_runs() -> None:
    # in-order packets are folded into the duplicate window only when one is out of
    # order: after runs shorter and longer than the window, late copies are still known
    for run in (5, 127, 128, 129, 1000):
        seqs = list(range(65000, 65000 + run))
        late = [seqs[-2], seqs[max(0, run - 99)]]
        a = feed([*seqs, *late, seqs[-1] + 2, seqs[-1] + 1, seqs[-1] + 1])
        assert counts(a) == (run + 2, run + 2, 0, 3, 0), run


def test_duplicates_across_a_gap() -> None:
    assert counts(feed([1, 2, 50, 2, 49, 49])) == (50, 4, 46, 2, 0)


def test_wrap_around() -> None:
    assert counts(feed([65533, 65534, 65535, 0, 1, 2])) == (6, 6, 0, 0, 0)
    assert counts(feed([65534, 0, 65535, 1])) == (4, 4, 0, 0, 0)
    assert counts(feed([65535, 1])) == (3, 2, 1, 0, 0)


def test_late_duplicate_across_the_wrap() -> None:
    assert counts(feed([65534, 0, 65535, 65535])) == (3, 3, 0, 1, 0)
    assert counts(feed([65534, 0, 65535, 1, 65535])) == (4, 4, 0, 1, 0)


def test_a_stray_very_late_packet_does_not_inflate_loss() -> None:
    seqs = list(range(1000, 1300))
    seqs.insert(250, 1000)  # an old packet 250 behind
    a = feed(seqs)
    assert (a.expected, a.received, a.lost) == (300, 300, 0)


def test_a_sender_restart_is_followed() -> None:
    a = feed([*range(100, 110), *range(40000, 40010)])
    # the first packet after the jump only starts probation
    assert (a.received, a.lost) == (19, 0)
    assert a.expected == 19


def test_many_cycles() -> None:
    seqs = [i % 65536 for i in range(0, 3 * 65536, 1000)]
    a = feed(seqs)
    assert a.expected == seqs[-1] + 2 * 65536 + 1
    assert a.received == len(seqs)


def test_parse_errors() -> None:
    a = RtpAnalysis()
    a.feed(b"junk", 0.0)
    a.feed(rtp(1), 0.02)
    a.feed(b"\x00" * 40, 0.04)
    assert counts(a) == (1, 1, 0, 0, 2)


def test_ssrc_change_starts_a_new_stream() -> None:
    a = RtpAnalysis()
    for seq in (10, 11, 12):
        a.feed(rtp(seq, ssrc=1), 0.0)
    for seq in (500, 502):
        a.feed(rtp(seq, ssrc=2), 0.0)
    assert counts(a) == (3 + 3, 5, 1, 0, 0)


def test_longest_ipi() -> None:
    a = RtpAnalysis()
    for t in (1.0, 1.02, 1.521305, 1.54):
        a.feed(rtp(int(t * 100)), t)
    assert abs(a.longest_ipi - 0.501305) < 1e-9


def test_constant_spacing_has_no_jitter() -> None:
    a = RtpAnalysis()
    for i in range(50):
        a.feed(rtp(i, ts=i * 160), 10.0 + i * 0.02)
    assert a.jitter_max < 1e-9 and a.jitter_avg < 1e-9


@st.composite
def stream(draw: st.DrawFn) -> tuple[list[int], int, int, int]:
    """Sequence numbers as a sender with small gaps, local reordering and duplicates
    produces them; returns (arrival order, expected, received, dups)."""
    base = draw(st.integers(0, 65535) | st.integers(65300, 65535))
    gaps = draw(st.lists(st.integers(1, 20), max_size=150))
    ext = [base]
    for gap in gaps:
        ext.append(ext[-1] + gap)
    order = list(ext)
    for i in draw(st.lists(st.integers(1, max(1, len(order) - 2)), max_size=20)):
        if i + 1 < len(order):
            order[i], order[i + 1] = order[i + 1], order[i]
    dups = 0
    arrivals: list[int] = []
    dup_flags = draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
    for seq, dup in zip(order, dup_flags, strict=True):
        arrivals.append(seq)
        if dup:
            arrivals.append(seq)
            dups += 1
    return [s % 65536 for s in arrivals], ext[-1] - base + 1, len(ext), dups


@settings(max_examples=300, deadline=None)
@given(stream())
def test_counts_property(sample: tuple[list[int], int, int, int]) -> None:
    seqs, expected, received, dups = sample
    a = feed(seqs)
    assert a.expected == expected
    assert a.received == received
    assert a.dups == dups
    assert a.lost == expected - received
    assert a.parse_errors == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 65535), st.integers(0, 2**32 - 1), st.floats(0, 5)),
        max_size=60,
    )
)
def test_jitter_and_counts_never_negative(packets: list[tuple[int, int, float]]) -> None:
    a = RtpAnalysis()
    now = 0.0
    for seq, ts, step in packets:
        now += step
        a.feed(rtp(seq, ts=ts), now)
        assert a.jitter_last >= 0 and a.jitter_max >= a.jitter_last >= 0
        assert a.jitter_avg >= 0 and a.longest_ipi >= 0
        assert a.lost >= 0 and a.received >= 0 and a.expected >= 0
        assert a.received + a.dups <= len(packets)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 1, 1, 2]),  # mostly one SSRC, now and then another
            st.integers(0, 40),  # sequence numbers close enough to repeat and reorder
            st.integers(0, 2**32 - 1),
            st.floats(0, 0.1),
        ),
        max_size=80,
    )
)
def test_jitter_follows_rfc3550_over_the_packets_counted(
    packets: list[tuple[int, int, int, float]],
) -> None:
    a = RtpAnalysis()
    now = 0.0
    ssrc_now: int | None = None
    last_transit: float | None = None
    jitter = jitter_max = jitter_sum = 0.0
    samples = 0
    for ssrc, seq, ts, step in packets:
        now += step
        before = a.received
        a.feed(rtp(seq, ssrc=ssrc, ts=ts), now)
        if a.received == before:
            continue  # a duplicate or a stray packet: no jitter step either
        assert a.received == before + 1
        if ssrc != ssrc_now:  # a new source: its first packet has nothing to compare with
            ssrc_now, last_transit = ssrc, None
        transit = now - ts / 8000
        if last_transit is not None:
            jitter += (abs(transit - last_transit) - jitter) / 16
            jitter_max = max(jitter_max, jitter)
            jitter_sum += jitter
            samples += 1
        last_transit = transit
    assert a.jitter_last == jitter
    assert a.jitter_max == jitter_max
    assert a.jitter_avg == (jitter_sum / samples if samples else 0.0)
