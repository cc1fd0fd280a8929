"""Overload protection in the engine: loads are injected, the clock is fake."""

from __future__ import annotations

import pytest

from pyrtpproxy.engine.events import OverloadChanged
from pyrtpproxy.engine.overload import LoadWindow, OverloadGuard

from .support import make_engine, run


def test_new_sessions_get_e98_while_overloaded_and_existing_ones_keep_working() -> None:
    engine = make_engine(overload_threshold=0.5)
    assert run(engine, b"U old 127.0.0.1 5000 ft", now=1.0).split()[0].isdigit()
    assert run(engine, b"L old 127.0.0.1 5002 ft tt").split()[0].isdigit()
    assert engine.report_load(0.49) == ()
    assert engine.report_load(0.6) == (OverloadChanged(overloaded=True, load=0.6),)
    assert run(engine, b"U new 127.0.0.1 5000 ft") == b"E98"
    assert run(engine, b"U new 127.0.0.1 5000 ft && S ttl=5") == b"E98"
    assert run(engine, b"L new 127.0.0.1 5002 ft tt") == b"0"  # L never creates
    assert run(engine, b"G nsess_created") == b"1"
    # the existing session: re-offer, answer, new port, query, delete
    assert run(engine, b"U old 127.0.0.1 5004 ft tt").split()[0].isdigit()
    assert run(engine, b"U old 127.0.0.1 5006 tt ft").split()[0].isdigit()
    assert run(engine, b"Ln old 127.0.0.1 5002 ft tt").split()[0].isdigit()
    assert run(engine, b"Q old ft tt", now=2.0) == b"59 0 0 0 0"
    assert run(engine, b"D old ft") == b"0"
    assert engine.counters.relay.sessions_refused_overload == 2


def test_sessions_are_accepted_again_below_the_lower_threshold() -> None:
    engine = make_engine(overload_threshold=0.9)
    engine.report_load(0.95)
    assert run(engine, b"U c 127.0.0.1 5000 ft", now=1.0) == b"E98"
    assert engine.report_load(0.88) == ()  # between 0.85 and 0.90: still overloaded
    assert run(engine, b"U c 127.0.0.1 5000 ft") == b"E98"
    assert engine.report_load(0.8) == (OverloadChanged(overloaded=False, load=0.8),)
    assert run(engine, b"U c 127.0.0.1 5000 ft").split()[0].isdigit()
    assert engine.counters.relay.sessions_refused_overload == 2


def test_without_overload_protection_no_load_refuses_anything() -> None:
    engine = make_engine()
    assert engine.report_load(1.0) == ()
    assert run(engine, b"U c 127.0.0.1 5000 ft", now=1.0).split()[0].isdigit()


def test_shutdown_is_checked_before_overload() -> None:
    engine = make_engine(overload_threshold=0.5)
    engine.report_load(1.0)
    engine.draining = True
    assert run(engine, b"U c 127.0.0.1 5000 ft", now=1.0) == b"E99"


@pytest.mark.parametrize(
    ("threshold", "release"), [(0.9, 0.85), (0.5, 0.45), (0.08, 0.04), (1.0, 0.95)]
)
def test_release_threshold(threshold: float, release: float) -> None:
    guard = OverloadGuard(threshold)
    assert guard.release == pytest.approx(release)
    assert not guard.update(threshold)  # at the threshold: not above it
    assert guard.update(threshold + 0.001) and guard.active
    assert not guard.update(release) and guard.active  # at the release: not below it
    assert guard.update(release - 0.001) and not guard.active


def test_load_window_is_the_busy_share_of_the_last_seconds() -> None:
    window = LoadWindow(2.0)
    assert window.sample(busy=10.0, now=100.0) == 0.0  # one sample: no interval yet
    assert window.sample(busy=10.5, now=101.0) == pytest.approx(0.5)
    assert window.sample(busy=11.5, now=102.0) == pytest.approx(0.75)  # 1.5 s of 2 s
    # the first second drops out of the window: only the busy last two seconds count
    assert window.sample(busy=12.5, now=103.0) == pytest.approx(1.0)
    assert window.sample(busy=12.5, now=104.0) == pytest.approx(0.5)
    assert window.sample(busy=12.5, now=105.0) == pytest.approx(0.0)


def test_load_window_survives_a_long_gap_and_clamps() -> None:
    window = LoadWindow(1.0)
    window.sample(busy=0.0, now=0.0)
    assert window.sample(busy=0.1, now=60.0) == pytest.approx(0.1 / 60)  # last two kept
    assert window.sample(busy=5.0, now=61.0) == 1.0  # more than the wall time: clamped
