"""pyrtpproxy.net: the one address-family rule and the one bind probe, on loopback."""

from __future__ import annotations

import socket

import pytest

from pyrtpproxy.net import family_of, probe_bind

from .conftest import ipv6_available


@pytest.mark.parametrize(
    ("host", "family"),
    [
        ("127.0.0.1", socket.AF_INET),
        ("0.0.0.0", socket.AF_INET),
        ("::1", socket.AF_INET6),
        ("::", socket.AF_INET6),
        ("2001:db8::5", socket.AF_INET6),
    ],
)
def test_family_of(host: str, family: socket.AddressFamily) -> None:
    assert family_of(host) is family


def test_probe_bind_refuses_a_busy_port_and_an_address_that_is_not_ours() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(OSError):
            probe_bind("127.0.0.1", port)
    probe_bind("127.0.0.1", port)  # free again, and the probe itself holds nothing
    probe_bind("127.0.0.1", port)
    with pytest.raises(OSError):
        probe_bind("192.0.2.77")  # TEST-NET-1: never configured here


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_probe_is_v6_only() -> None:
    # Media sockets are v6-only, so an IPv4 holder of the port must not make [::] look busy.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", 0))
        port = holder.getsockname()[1]
        probe_bind("::", port)
