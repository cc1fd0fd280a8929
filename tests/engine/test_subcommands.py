"""``&&`` sub-commands as the reference answers them (media-features.md §5.3, verified)."""

from __future__ import annotations

import re

from pyrtpproxy.engine.addresses import AddressPlan, LocalAddress
from pyrtpproxy.engine.events import TosChanged

from .support import expire, harness, make_engine, run

PORT = rb"\d+ 127\.0\.0\.1"


def test_s_ttl_sets_and_keeps_the_timeout() -> None:
    engine = make_engine()
    assert re.fullmatch(PORT, run(engine, b"U s1 127.0.0.1 5000 ft && S ttl=7", 0.0))
    assert run(engine, b"Q s1 ft") == b"7 0 0 0 0"
    assert re.fullmatch(PORT, run(engine, b"U s2 127.0.0.1 5000 ft && Sr ttl=9"))
    assert run(engine, b"Q s2 ft") == b"9 0 0 0 0"
    reply = run(engine, b"U s3 127.0.0.1 5000 ft tt && S ttl=11 && L 127.0.0.1 5002")
    assert re.fullmatch(PORT + b" && 0 && " + PORT, reply)
    assert run(engine, b"Q s3 ft tt") == b"11 0 0 0 0"
    # the TTL governs the idle timeout, and later U/L restarts it with the same value
    run(engine, b"U s3 127.0.0.1 5000 ft tt", 5.0)
    assert run(engine, b"Q s3 ft tt", 5.0) == b"11 0 0 0 0"
    assert expire(engine, 16.9) == [] and run(engine, b"Q s3 ft tt", 16.9)[:1] == b"0"
    expire(engine, 17.0)
    assert run(engine, b"Q s3 ft tt", 17.0) == b"E50"


def test_s_on_q_applies_from_the_next_query() -> None:
    engine = make_engine()
    run(engine, b"U s8d 127.0.0.1 5000 ft")
    assert run(engine, b"Q s8d ft && S ttl=20") == b"60 0 0 0 0"
    assert run(engine, b"Q s8d ft") == b"20 0 0 0 0"


def test_bad_s_settings_are_e3_and_nothing_happens() -> None:
    engine = make_engine()
    for bad in (b"S ttl=0", b"S foo=1", b"S ttl=5 extra", b"S ttl=x", b"Sxy ttl=5"):
        assert run(engine, b"U s2c 127.0.0.1 5000 ft && " + bad) == b"E3", bad
    assert run(engine, b"G nsess_created") == b"0"


def test_s_tos_changes_the_legs_sockets() -> None:
    engine = make_engine()
    assert re.fullmatch(PORT, run(engine, b"U s2b 127.0.0.1 5000 ft && S tos=40"))
    (changed,) = [e for e in harness(engine).take() if isinstance(e, TosChanged)]
    assert changed.tos == 40
    v6 = make_engine(addresses=AddressPlan(ipv4=(), ipv6=(LocalAddress("::1", ipv6=True),)))
    assert run(v6, b"U6 s6 ::1 5000 ft && S tos=40").endswith(b" && -1")


def test_a_failing_l_fails_the_whole_command_and_creates_nothing() -> None:
    engine = make_engine()
    for bad in (b"L 999.0.0.1 5002", b"L 127.0.0.1 abc", b"Lx 127.0.0.1 5002"):
        assert run(engine, b"U s5 127.0.0.1 5000 ft tt && " + bad) == b"E3", bad
    assert run(engine, b"Q s5 ft") == b"E50"
    assert run(engine, b"G nsess_created") == b"0"
    # a short address is ignored, as in L
    reply = run(engine, b"U s5b 127.0.0.1 5000 ft tt && L 1.2.3 5002")
    assert re.fullmatch(PORT + b" && " + PORT, reply)
    v6 = make_engine(addresses=AddressPlan(ipv4=(), ipv6=(LocalAddress("::1", ipv6=True),)))
    assert run(v6, b"U6 s6 ::1 5000 ft tt && L ::1 5002") == b"E3"  # E36 in the L
    assert re.fullmatch(
        rb"\d+ ::1 6 && \d+ ::1 6", run(v6, b"U6 s6b ::1 5000 ft tt && L6 ::1 5002")
    )


def test_d_and_module_sub_commands() -> None:
    engine = make_engine()
    reply = run(engine, b"U s4b 127.0.0.1 5000 ft tt && D && D")
    assert re.fullmatch(PORT + b" && 0 && -1", reply)
    assert run(engine, b"U s9 127.0.0.1 5000 ft && M3:1 Dtag") == b"E3"
    for date in (b"20191015", b"20251015"):
        assert run(engine, b"VF " + date) == b"1"
