"""The party address of a U/L, checked against :mod:`ipaddress` as the definition of a
numeric IPv4 address (the parser does without it, for speed)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.addresses import IGNORED_ADDRESS, MediaAddress, resolve_media_address
from pyrtpproxy.protocol.errors import ErrorCode, ProtocolError
from pyrtpproxy.protocol.parse import dotted_ipv4

# texts near dotted quads: digits, dots, leading zeros, big octets, a stray character
octet = st.one_of(
    st.integers(0, 300).map(lambda n: str(n).encode()),
    st.text("0123456789", max_size=4).map(str.encode),
    st.sampled_from([b"", b"00", b"01", b"255", b"256", b" 1", b"1x", b"\xd9\xa1", b"+1"]),
)
near_ipv4 = st.one_of(
    st.lists(octet, min_size=1, max_size=6).map(b".".join),
    st.binary(max_size=18),
)


def reference_ipv4(text: bytes) -> str | None:
    try:
        return ipaddress.IPv4Address(text.decode("ascii")).compressed
    except (UnicodeDecodeError, ValueError):
        return None


@settings(max_examples=1000, deadline=None)
@given(near_ipv4)
def test_dotted_ipv4_accepts_what_ipaddress_accepts(text: bytes) -> None:
    canonical = reference_ipv4(text)
    assert dotted_ipv4(text) == (canonical is not None)
    if canonical is not None:
        assert canonical == text.decode("ascii")  # accepted text is already canonical


@settings(max_examples=1000, deadline=None)
@given(near_ipv4, st.sampled_from([b"5000", b"0", b"65537", b"x1", b"", b"1" * 30]))
def test_ipv4_party_address_as_ipaddress_reads_it(addr: bytes, port: bytes) -> None:
    try:
        got: MediaAddress | ErrorCode = resolve_media_address(addr, port, ipv6=False)
    except ProtocolError as exc:
        got = exc.code
    canonical = reference_ipv4(addr)
    if not 7 <= len(addr) <= 15:
        expected: MediaAddress | ErrorCode = IGNORED_ADDRESS
    elif canonical is None or not port.isdigit():
        expected = ErrorCode.BAD_ADDRESS
    elif canonical == "0.0.0.0":
        expected = MediaAddress(None, hold=True)
    else:
        expected = MediaAddress((canonical, int(port) % 65536))
    assert got == expected


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (b"::1", MediaAddress(("::1", 5000))),
        (b"2001:DB8::0:1", MediaAddress(("2001:db8::1", 5000))),
        (b"::", MediaAddress(None, hold=True)),
    ],
)
def test_ipv6_party_address_is_canonical(addr: bytes, expected: MediaAddress) -> None:
    assert resolve_media_address(addr, b"5000", ipv6=True) == expected


def test_bad_ipv6_party_address_is_e_bad_address() -> None:
    with pytest.raises(ProtocolError) as caught:
        resolve_media_address(b"1:2:3", b"5000", ipv6=True)
    assert caught.value.code is ErrorCode.BAD_ADDRESS
