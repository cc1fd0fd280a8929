"""Addresses: transport endpoints, the relay's own media addresses (``-l``/``-6``/``-A``)
and the party address a U/L carries (relay-behaviour.md §7, protocol.md §5.3)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from ..protocol.commands import Interface
from ..protocol.errors import ErrorCode, ProtocolError
from ..protocol.parse import dotted_ipv4
from ..protocol.values import slot_init


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
        return choices[min(interface, len(choices) - 1)]  # (an IntEnum: .value costs a call)

    def all(self) -> tuple[LocalAddress, ...]:
        """Every configured address."""
        return self.ipv4 + self.ipv6 + self.labelled


@slot_init
@dataclass(frozen=True, slots=True)
class MediaAddress:
    """Where a U/L says its party's media comes from.

    ``endpoint`` is None when the address was silently ignored; ``hold`` is set for the
    null host (``0.0.0.0``/``::``), which puts the leg on hold and keeps the old address.
    """

    endpoint: Endpoint | None
    hold: bool = False


IGNORED_ADDRESS = MediaAddress(None)
UNSPECIFIED_IPV4 = "0.0.0.0"  # the null host: no leading zeros, so its only spelling


def resolve_media_address(addr: bytes, port: bytes, ipv6: bool) -> MediaAddress:
    """Resolve U/L's address and port numerically, with rtpproxy's quirks (§5.3 step 5)."""
    low, high = (2, 45) if ipv6 else (7, 15)
    if not low <= len(addr) <= high:
        return IGNORED_ADDRESS
    if ipv6:
        try:
            ip = ipaddress.IPv6Address(addr.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(ErrorCode.BAD_ADDRESS, f"bad address {addr!r}") from None
        host, unspecified = ip.compressed, ip.is_unspecified
    elif dotted_ipv4(addr):  # the common case, without building an IPv4Address
        host = addr.decode("ascii")  # already canonical
        unspecified = host == UNSPECIFIED_IPV4
    else:
        raise ProtocolError(ErrorCode.BAD_ADDRESS, f"bad address {addr!r}")
    if not port.isdigit():
        raise ProtocolError(ErrorCode.BAD_ADDRESS, f"bad port {port!r}")
    if unspecified:
        return MediaAddress(None, hold=True)
    # 10**16 is a multiple of 65536, so the last 16 digits decide the wrapped port
    return MediaAddress(Endpoint(host, int(port[-16:]) % 65536))


CC_SELF = "%%CC_SELF%%"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes, the last one the terminating NUL


def _strip_scheme(name: bytes) -> bytes:
    for scheme in (b"unix:", b"tcp:"):
        if name.startswith(scheme):
            return name[len(scheme) :]
    return name


@dataclass(frozen=True, slots=True)
class NotifyTarget:
    """A permitted timeout-notification target: one ``-n`` value (relay-behaviour.md §6).

    Either a Unix stream socket (``path``) or TCP (``host``, ``port``), where ``host`` is
    :data:`CC_SELF` for the wildcard that connects back to the host that sent the U.
    ``spec`` is the value as given, which a U's ``notify_socket`` is matched against.
    """

    spec: bytes
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> NotifyTarget:
        """``unix:PATH``, bare ``PATH``, ``tcp:HOST:PORT`` (numeric host, IPv6 in brackets)
        or ``tcp:%%CC_SELF%%:PORT``; raises :class:`ValueError` saying what is wrong."""
        spec = text.encode("utf-8", "surrogateescape")  # the bytes of the command line
        if text.startswith("tcp:"):
            host, colon, port = text[4:].rpartition(":")
            if not colon:
                raise ValueError("a tcp: target needs HOST:PORT")
            if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError("port must be a number 1-65535")
            if host != CC_SELF:
                try:  # never a name lookup: like -l and -s, numeric addresses only
                    host = ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).compressed
                except ValueError:
                    raise ValueError(
                        f"host must be a numeric IPv4 address, an [IPv6] address or {CC_SELF}"
                    ) from None
            return cls(spec, host=host, port=int(port))
        path = text.removeprefix("unix:")
        if not path:
            raise ValueError("the socket path is empty")
        if len(path.encode("utf-8", "surrogateescape")) > UNIX_PATH_MAX:
            raise ValueError(f"the socket path is longer than {UNIX_PATH_MAX} bytes")
        return cls(spec, path=path)

    @property
    def wildcard(self) -> bool:
        """``tcp:%%CC_SELF%%:PORT``: the host is the one that sent the U."""
        return self.host == CC_SELF

    def matches(self, name: bytes) -> bool:
        """Whether a U's ``notify_socket`` names this target: the same string, or the same
        once a ``unix:`` or ``tcp:`` prefix is dropped from either (OpenSIPS leaves it out)."""
        return name == self.spec or _strip_scheme(name) == _strip_scheme(self.spec)

    def address_for(self, source_host: str) -> str | Endpoint:
        """Where the notification goes: the Unix socket path, or the TCP endpoint with
        :data:`CC_SELF` replaced by ``source_host`` (the host that sent the U)."""
        if self.path:
            return self.path
        return Endpoint(source_host if self.wildcard else self.host, self.port)

    def __str__(self) -> str:
        return self.spec.decode("utf-8", "surrogateescape")
