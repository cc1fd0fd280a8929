"""Advertised addresses given as DNS names (``-A relay.example.net``, ``-l addr=name``).

A relay on a dynamic IP advertises a name; U/L replies must carry an address, so the
name is resolved at start (a name that does not resolve is a start-up error) and again
every ``--resolve-interval`` seconds. The lookups run off the event loop (they may
block); a failed one keeps the last good address, is counted and logged once until the
name resolves again.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("pyrtpproxy.names")

Resolver = Callable[[str, bool], str]  # (name, IPv6?) -> address; raises OSError


def is_name(text: str) -> bool:
    """True for an advertised value that is not a numeric address."""
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return True
    return False


def system_resolver(name: str, ipv6: bool) -> str:
    """The first address of ``name`` in the family, from the host's resolver."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(name, None, family, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise OSError(exc.errno, exc.strerror) from None
    if not infos:
        raise OSError(f"no IPv{6 if ipv6 else 4} address")
    return str(infos[0][4][0])


@dataclass
class AdvertisedNames:
    """The names to advertise and what each resolves to now."""

    names: dict[str, bool]  # name -> IPv6?
    resolver: Resolver = system_resolver
    current: dict[str, str] = field(default_factory=dict)
    _failing: set[str] = field(default_factory=set)

    def lookup(self) -> dict[str, str | OSError]:
        """Resolve every name (blocking: run it in a thread)."""
        results: dict[str, str | OSError] = {}
        for name, ipv6 in self.names.items():
            try:
                results[name] = self.resolver(name, ipv6)
            except OSError as exc:
                results[name] = exc
        return results

    def apply(self, results: dict[str, str | OSError]) -> list[tuple[str, str]]:
        """Take a lookup's results (on the event loop); the names whose address changed."""
        changed: list[tuple[str, str]] = []
        for name, result in results.items():
            if isinstance(result, OSError):
                if name not in self._failing:
                    self._failing.add(name)
                    log.warning(
                        "cannot resolve advertised name %s (%s); still advertising %s",
                        name,
                        result.strerror or result,
                        self.current.get(name, "nothing"),
                    )
                continue
            if name in self._failing:
                self._failing.discard(name)
                log.info("advertised name %s resolves again", name)
            if self.current.get(name) != result:
                if name in self.current:
                    log.info("advertised name %s now resolves to %s", name, result)
                self.current[name] = result
                changed.append((name, result))
        return changed
