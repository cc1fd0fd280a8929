"""Media port allocation: even RTP port P with RTCP on P+1, inside the configured range."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from .addresses import LocalAddress

if TYPE_CHECKING:
    from .session import Leg
    from .taps import Tap


def port_range(minimum: int, maximum: int) -> range:
    """Usable RTP ports for ``-m``/``-M``: the minimum rounded up to even, the maximum
    lowered so that P+1 still fits (odd ``-M`` → ``-M``-1, even → ``-M``-2)."""
    low = minimum + (minimum & 1)
    high = maximum - 1 if maximum & 1 else maximum - 2
    return range(low, high + 1, 2)


class HostProbe(Protocol):
    """The questions the engine asks the host while a command runs, synchronously,
    because the reply depends on the answer. Nothing else is called from the engine.

    ``try_bind`` is the port probe: a U/L reply must carry a port that is already bound,
    so the media layer binds the pair here and keeps it for the leg until it drains the
    :class:`~pyrtpproxy.engine.events.LegOpened` (or ``LegClosed``) event. ``open_tap``
    is its twin for R and C, whose replies say whether the file or copy could be opened;
    ``read_prompt`` P's, whose reply says whether a prompt file was found.
    """

    def try_bind(self, local: LocalAddress, port: int) -> bool:
        """Bind RTP on ``port`` and RTCP on ``port + 1``; False if either is taken.
        Raises :class:`PortsExhausted` when no port could be bound at all (the host is out
        of file descriptors)."""

    def source_address_for(self, remote: str, ipv6: bool) -> str | None:
        """The local address the OS would use to reach ``remote`` (``r`` modifier)."""

    def is_local_address(self, host: str, ipv6: bool) -> bool:
        """Whether media sockets can bind to ``host`` (``l`` modifier)."""

    def resolve_ipv4(self, host: str) -> str | None:
        """The IPv4 address of ``host`` (a literal or a name: a ``C udp:`` target)."""

    def open_tap(self, leg: Leg, tap: Tap) -> bool:
        """Open what ``tap`` writes to or sends from (files, a bound copy port pair);
        False if that fails (``R`` answers E50, ``C`` E65). Kept until ``TapStarted``."""

    def read_prompt(self, path: bytes) -> bytes | None:
        """The whole prompt file ``path`` (``P``), None if it does not exist; any other
        failure (unreadable, too large) raises :class:`OSError` and ``P`` answers E60."""


class PortsExhausted(Exception):
    """No candidate port could be bound."""


class PortAllocator:
    """Hands out RTP ports; never the same one twice while it is in use.

    ``random_order`` (rtpproxy's default) picks any free port at random so ports are
    unpredictable; otherwise ports go out sequentially after the last one used (``-b``).
    Binding is the caller's business: :meth:`allocate` offers candidates to ``try_bind``,
    which returns False for a port it cannot use (in use elsewhere, say).
    """

    def __init__(
        self,
        ports: range,
        *,
        random_order: bool = True,
        reserved: Iterable[int] = (),
        rng: random.Random | None = None,
    ) -> None:
        skip = set(reserved)
        self._random = random_order
        self._rng = rng or random.Random()
        self._all = [p for p in ports if p not in skip and p + 1 not in skip]
        self._free = list(self._all)
        self._free_set = set(self._all)
        self._known = frozenset(self._all)
        self._next_index = 0  # sequential mode: where the next search starts in _all

    @property
    def capacity(self) -> int:
        """Number of RTP ports in the range."""
        return len(self._all)

    @property
    def free(self) -> int:
        """Number of RTP ports not in use."""
        return len(self._free_set)

    def in_use(self, port: int) -> bool:
        """Whether ``port`` is currently allocated."""
        return port in self._known and port not in self._free_set

    def allocate(self, try_bind: Callable[[int], bool]) -> int:
        """Return a port that ``try_bind`` accepted; raise :class:`PortsExhausted`."""
        if self._random:
            return self._allocate_random(try_bind)
        return self._allocate_sequential(try_bind)

    def claim(self, port: int) -> bool:
        """Mark a given ``port`` in use (a restored session's); False if it is outside
        the range or taken already."""
        if port not in self._free_set:
            return False
        # the list keeps a stale entry, skipped when drawn (a restore claims thousands)
        self._free_set.discard(port)
        return True

    def release(self, port: int) -> None:
        """Give ``port`` back; releasing a port not in use is ignored."""
        if port in self._known and port not in self._free_set:
            self._free_set.add(port)
            self._free.append(port)

    def _allocate_random(self, try_bind: Callable[[int], bool]) -> int:
        rejected: list[int] = []
        try:
            while self._free:
                # (randrange's two Python frames cost more than this; the bias is 2**-53)
                i = int(self._rng.random() * len(self._free))
                # swap-remove keeps allocation O(1)
                self._free[i], self._free[-1] = self._free[-1], self._free[i]
                port = self._free.pop()
                if port not in self._free_set:
                    continue  # stale entry (a port claimed by a restore)
                rejected.append(port)  # first, so that a try_bind that raises loses nothing
                if try_bind(port):
                    rejected.pop()
                    self._free_set.discard(port)
                    return port
            raise PortsExhausted
        finally:
            self._free.extend(rejected)

    def _allocate_sequential(self, try_bind: Callable[[int], bool]) -> int:
        count = len(self._all)
        for step in range(count):
            i = (self._next_index + step) % count
            port = self._all[i]
            if port in self._free_set and try_bind(port):
                self._free_set.discard(port)
                self._free.remove(port)
                self._next_index = (i + 1) % count
                return port
        raise PortsExhausted
