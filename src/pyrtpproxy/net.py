"""Socket helpers shared by the shell: the address family of a host, and bind probes."""

from __future__ import annotations

import _socket
import socket
from typing import TypeAlias

# Sockets made and closed per call leg (media: two per leg) or per command (a unix:
# control connection) are made as the C type itself: ``socket.socket`` adds a
# Python-level constructor and close to every one. Sockets made as ``socket.socket``
# (handed over by a previous relay) are of this type too.
RawSocket: TypeAlias = _socket.socket
MediaSocket: TypeAlias = RawSocket


def family_of(host: str) -> socket.AddressFamily:
    """``AF_INET6`` for an IPv6 address (numeric, so it has a colon), ``AF_INET`` otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def probe_bind(host: str, port: int = 0) -> None:
    """Bind a throw-away UDP socket to ``(host, port)``; raises :class:`OSError` if it cannot.

    IPv6 probes are v6-only, like the media sockets they stand for, so an IPv4 socket on
    the same port does not make an IPv6 one look busy.
    """
    family = family_of(host)
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))
