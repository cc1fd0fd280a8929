"""Port allocation (relay-behaviour.md §1)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.addresses import LocalAddress
from pyrtpproxy.engine.ports import PortAllocator, PortsExhausted, port_range

from .support import FakeHost, make_engine, run


@pytest.mark.parametrize(
    ("low", "high", "first", "last"),
    [
        (35000, 65000, 35000, 64998),  # even -M: last RTP port is -M - 2
        (35001, 65001, 35002, 65000),  # odd -m rounds up; odd -M: -M - 1
        (23820, 23823, 23820, 23822),
        (1, 65535, 2, 65534),
        (10, 11, 10, 10),
    ],
)
def test_port_range_rounding(low: int, high: int, first: int, last: int) -> None:
    ports = port_range(low, high)
    assert ports[0] == first and ports[-1] == last
    assert all(p % 2 == 0 and low <= p and p + 1 <= high for p in ports)


def test_port_range_may_be_empty() -> None:
    assert len(port_range(10, 10)) == 0
    assert len(port_range(11, 12)) == 0


def test_sequential_order_and_wrap_around() -> None:
    # -b -m 23820 -M 23823 gave 23820 then 23822 (verified)
    alloc = PortAllocator(port_range(23820, 23823), random_order=False)
    assert alloc.allocate(lambda p: True) == 23820
    assert alloc.allocate(lambda p: True) == 23822
    with pytest.raises(PortsExhausted):
        alloc.allocate(lambda p: True)
    alloc.release(23820)
    assert alloc.allocate(lambda p: True) == 23820


def test_sequential_continues_after_the_last_one_used() -> None:
    alloc = PortAllocator(port_range(1000, 1009), random_order=False)  # 1000..1008 step 2
    assert [alloc.allocate(lambda p: True) for _ in range(3)] == [1000, 1002, 1004]
    alloc.release(1000)
    # not back to the freed 1000: the search goes on after 1004 and wraps
    assert [alloc.allocate(lambda p: True) for _ in range(3)] == [1006, 1008, 1000]


def test_sequential_engine_ports() -> None:
    engine = make_engine(port_min=23820, port_max=23823, sequential=True)
    assert run(engine, b"U c 127.0.0.1 5000 ft") == b"23820 127.0.0.1"
    assert run(engine, b"L c 127.0.0.1 5002 ft tt") == b"23822 127.0.0.1"


def test_refused_ports_are_skipped() -> None:
    for order in (True, False):
        alloc = PortAllocator(port_range(2000, 2021), random_order=order, rng=random.Random(3))
        refused = {2000, 2002, 2008}

        def bindable(port: int, refused: set[int] = refused) -> bool:
            return port not in refused

        got = {alloc.allocate(bindable) for _ in range(8)}
        assert got == set(port_range(2000, 2021)) - refused
        with pytest.raises(PortsExhausted):
            alloc.allocate(bindable)
        # the refused ports were not lost: they can be used once they bind
        assert alloc.allocate(lambda p: True) in refused


def test_reserved_control_ports_are_skipped() -> None:
    alloc = PortAllocator(port_range(22218, 22227), reserved=(22223, 22222), random_order=False)
    got = []
    while True:
        try:
            got.append(alloc.allocate(lambda p: True))
        except PortsExhausted:
            break
    assert 22222 not in got and 22221 not in got
    assert 22218 in got and 22224 in got


def _refusing(refused: set[int]) -> Callable[[int], bool]:
    return lambda port: port not in refused


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.sets(st.integers(0, 15), max_size=5)),
        st.tuples(st.just("release"), st.integers(0, 40)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.booleans(), st.integers(0, 2**32), st.integers(0, 3), st.integers(0, 3))
def test_allocate_release_never_duplicates(
    steps: list[tuple[str, object]], sequential: bool, seed: int, lo: int, hi: int
) -> None:
    low, high = 30000 + lo, 30030 + hi
    ports = port_range(low, high)
    alloc = PortAllocator(ports, random_order=not sequential, rng=random.Random(seed))
    in_use: list[int] = []
    for kind, arg in steps:
        if kind == "alloc":
            assert isinstance(arg, set)
            refused = {ports[i % len(ports)] for i in arg}
            bindable = set(ports) - set(in_use) - refused
            try:
                port = alloc.allocate(_refusing(refused))
            except PortsExhausted:
                assert not bindable
                continue
            assert port in bindable
            assert port % 2 == 0 and low <= port and port + 1 <= high
            in_use.append(port)
        else:
            assert isinstance(arg, int)
            if in_use:
                port = in_use.pop(arg % len(in_use))
                alloc.release(port)
            else:
                alloc.release(ports[0] + 2 * arg)  # releasing a free port is ignored
        assert alloc.free == len(ports) - len(in_use)
        assert all(alloc.in_use(p) for p in in_use)


def test_exhaustion_gives_e72_then_e71() -> None:
    # one RTP port pair in the range
    engine = make_engine(port_min=40000, port_max=40001)
    assert run(engine, b"U c1 127.0.0.1 5000 ft") == b"40000 127.0.0.1"
    assert run(engine, b"U c2 127.0.0.1 5000 ft") == b"E72"
    assert run(engine, b"L c1 127.0.0.1 5002 ft tt") == b"E71"
    # the failed create leaves no session behind
    assert run(engine, b"Q c2 ft") == b"E50"
    assert run(engine, b"D c1 ft") == b"0"
    assert run(engine, b"U c2 127.0.0.1 5000 ft") == b"40000 127.0.0.1"


def test_e71_for_a_new_port_and_for_a_sub_lookup() -> None:
    engine = make_engine(port_min=40000, port_max=40003)
    assert run(engine, b"U c1 127.0.0.1 5000 ft").endswith(b" 127.0.0.1")
    assert run(engine, b"U c2 127.0.0.1 5000 ft").endswith(b" 127.0.0.1")
    assert run(engine, b"Un c1 127.0.0.1 5000 ft") == b"E71"
    assert run(engine, b"Q c1 ft") == b"60 0 0 0 0"  # the session itself survives
    engine = make_engine(port_min=40000, port_max=40003)
    assert run(engine, b"U c1 127.0.0.1 5000 ft").endswith(b" 127.0.0.1")
    assert run(engine, b"U c2 127.0.0.1 5000 ft").endswith(b" 127.0.0.1")
    assert run(engine, b"U c2 127.0.0.1 5000 ft tt && L 127.0.0.1 6000").endswith(b" && -71")


def test_ports_in_use_by_others_are_skipped_by_the_engine() -> None:
    host = FakeHost(busy={40000, 40003})  # 40000 and 40002's RTCP are taken
    engine = make_engine(port_min=40000, port_max=40007, host=host, sequential=True)
    assert run(engine, b"U c 127.0.0.1 5000 ft") == b"40004 127.0.0.1"
    assert run(engine, b"L c 127.0.0.1 5002 ft tt") == b"40006 127.0.0.1"
    assert run(engine, b"U d 127.0.0.1 5000 ft") == b"E72"


def test_ports_are_released_with_the_session() -> None:
    engine = make_engine(port_min=40000, port_max=40003)
    for _ in range(5):
        assert run(engine, b"U c 127.0.0.1 5000 ft").endswith(b"127.0.0.1")
        assert run(engine, b"L c 127.0.0.1 5002 ft tt").endswith(b"127.0.0.1")
        assert engine.ports.free == 0
        assert run(engine, b"D c ft") == b"0"
        assert engine.ports.free == 2


def test_new_port_is_fresh_and_old_one_released() -> None:
    engine = make_engine(port_min=40000, port_max=40005)
    first = run(engine, b"U c 127.0.0.1 5000 ft").split()[0]
    second = run(engine, b"Un c 127.0.0.1 5000 ft").split()[0]
    assert first != second
    assert not engine.ports.in_use(int(first))
    third = run(engine, b"Un c 127.0.0.1 5000 ft").split()[0]
    assert third != second


class OutOfDescriptors(FakeHost):
    """A host that cannot open any socket (the open-file limit is reached)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def try_bind(self, local: LocalAddress, port: int) -> bool:
        if self.full:
            raise PortsExhausted
        return super().try_bind(local, port)


@pytest.mark.parametrize("sequential", [False, True])
def test_a_host_out_of_descriptors_gives_e72_and_e71_and_loses_no_port(sequential: bool) -> None:
    host = OutOfDescriptors()
    engine = make_engine(port_min=40000, port_max=40007, host=host, sequential=sequential)
    assert run(engine, b"U c1 127.0.0.1 5000 ft").endswith(b" 127.0.0.1")
    host.full = True
    assert run(engine, b"U c2 127.0.0.1 5000 ft") == b"E72"
    assert run(engine, b"L c1 127.0.0.1 5002 ft tt") == b"E71"
    assert engine.ports.free == 3  # every port the failed attempts tried is still free
    host.full = False
    assert run(engine, b"L c1 127.0.0.1 5002 ft tt").endswith(b" 127.0.0.1")
    assert run(engine, b"U c2 127.0.0.1 5000 ft").endswith(b" 127.0.0.1")
    assert run(engine, b"L c2 127.0.0.1 5002 ft tt").endswith(b" 127.0.0.1")
    assert engine.ports.free == 0
