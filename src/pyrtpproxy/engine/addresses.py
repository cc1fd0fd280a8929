"""Addresses: transport endpoints, the relay's own media addresses (``-l``/``-6``/``-A``)
and the party address a U/L carries (relay-behaviour.md §7, protocol.md §5.3)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from ..protocol.commands import Interface
from ..protocol.errors import ErrorCode, ProtocolError


class Endpoint(NamedTuple):
    """A transport address; compares equal to the plain ``(host, port)`` tuples sockets give."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """A media address of this relay: what sockets bind to, and what replies advertise."""

    host: str  # "" means the wildcard address of the family
    ipv6: bool = False
    advertised: str | None = None
    label: str | None = None

    @property
    def bind_host(self) -> str:
        """What sockets bind to: the address, or the family's wildcard."""
        return self.host or ("::" if self.ipv6 else "0.0.0.0")

    @property
    def reply_address(self) -> str | None:
        """Address to put in U/L replies; None when bound to a wildcard (port-only reply)."""
        if self.advertised:
            return self.advertised
        return self.host or None


@dataclass(frozen=True, slots=True)
class AddressPlan:
    """Media addresses from ``-l``/``-6``/``-A``: internal and external per family."""

    ipv4: tuple[LocalAddress, ...] = (LocalAddress(""),)
    ipv6: tuple[LocalAddress, ...] = ()
    labelled: tuple[LocalAddress, ...] = ()

    @property
    def bridge_mode(self) -> bool:
        """Two interfaces (``-l a/b``): sessions bridge internal and external networks."""
        return len(self.ipv4) > 1 or len(self.ipv6) > 1

    def pick(self, ipv6: bool, interface: Interface) -> LocalAddress:
        """The address of ``interface`` in the family; ``E36`` when the family has none."""
        choices = self.ipv6 if ipv6 else self.ipv4
        if not choices:
            raise ProtocolError(ErrorCode.NO_ADDRESS_OF_FAMILY, "no local address of that family")
        return choices[min(interface.value, len(choices) - 1)]

    def all(self) -> tuple[LocalAddress, ...]:
        """Every configured address."""
        return self.ipv4 + self.ipv6 + self.labelled


@dataclass(frozen=True, slots=True)
class MediaAddress:
    """Where a U/L says its party's media comes from.

    ``endpoint`` is None when the address was silently ignored; ``hold`` is set for the
    null host (``0.0.0.0``/``::``), which puts the leg on hold and keeps the old address.
    """

    endpoint: tuple[str, int] | None
    hold: bool = False


IGNORED_ADDRESS = MediaAddress(None)


def resolve_media_address(addr: bytes, port: bytes, ipv6: bool) -> MediaAddress:
    """Resolve U/L's address and port numerically, with rtpproxy's quirks (§5.3 step 5)."""
    low, high = (2, 45) if ipv6 else (7, 15)
    if not low <= len(addr) <= high:
        return IGNORED_ADDRESS
    try:
        text = addr.decode("ascii")
        ip = ipaddress.IPv6Address(text) if ipv6 else ipaddress.IPv4Address(text)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(ErrorCode.BAD_ADDRESS, f"bad address {addr!r}") from None
    if not port.isdigit():
        raise ProtocolError(ErrorCode.BAD_ADDRESS, f"bad port {port!r}")
    if ip.is_unspecified:
        return MediaAddress(None, hold=True)
    # 10**16 is a multiple of 65536, so the last 16 digits decide the wrapped port
    return MediaAddress((ip.compressed, int(port[-16:]) % 65536))
