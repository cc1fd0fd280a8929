"""In-kernel forwarding of settled streams through nftables (``--kernel-forward``).

Once a stream has latched and its peer's address is known, the relay adds a few map
elements to its own nftables table. From then on the kernel rewrites each packet from the
latched source to the stream's port (destination := the peer's address, source := the
peer stream's port) and delivers it without waking the relay. Everything else still reaches
the relay's sockets: strangers, re-latching, asymmetric legs, a leg bridged to the other
address family.

The table (family ``inet``) holds the same sets and maps twice, once per address family
(suffix ``4`` and ``6``). A packet arriving for the relay is matched on its source
address, source port and destination port (the relay's ports are unique, so this names
one stream):

* ``inbound4`` (a set with a counter per element) says "this is a kernel-forwarded
  stream" and counts its packets and bytes;
* ``in_addr4``, ``in_sport4`` and ``in_dport4`` give the new destination address, the new
  source port (the peer stream's) and the new destination port;
* ``out_addr4``, keyed on the rewritten packet (whose source port is the relay's own),
  gives the new source address. It is set after routing (postrouting, or input for a
  local party): in prerouting a local source address would make the packet look martian.

Forwarded packets are not tracked by conntrack (``notrack``), so stateful NAT rules of the
host leave them alone. Counters are folded into the streams' own counters by
:meth:`KernelForwarder.sync`, which the app calls once a second and before Q/G/I.

The table is created with the ``owner`` flag: it belongs to the relay's netlink socket,
no other process can change it, and the kernel deletes it when the relay exits, however
it exits; ``nft flush ruleset`` (a firewall reload) leaves it alone. So every relay
process has a table of its own (``pyrtpproxy_<pid>`` by default), and a table of that name
that outlives its relay cannot exist.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..engine.addresses import Endpoint
from ..engine.counters import Counters
from ..engine.session import Stream

log = logging.getLogger("pyrtpproxy.kernel")

STRANGER_READ_INTERVAL = 0.5  # seconds between counter reads that a stranger's packet causes
CAP_NET_ADMIN = 12  # capability bit (linux/capability.h)
_OUTPUT_NO_SERVICE_NAMES = 0  # libnftables output flags: numeric ports, plain text
_COUNTED = re.compile(rb"([0-9A-Fa-f:.]+) \. (\d+) \. (\d+) counter packets (\d+) bytes (\d+)")
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
TABLE_PREFIX = "pyrtpproxy_"


@dataclass(frozen=True, slots=True)
class Family:
    """What differs between IPv4 and IPv6 in the table and its counters."""

    suffix: str  # of the sets' and maps' names
    l3: str  # nft's protocol of the addresses
    address_type: str
    headers: int  # bytes the kernel counts per packet besides the UDP payload
    unfragmented: str  # matches only packets whose UDP header is in this datagram
    forwarding_sysctl: str

    def routes_between_hosts(self) -> bool:
        """Whether this network namespace routes this family between other hosts."""
        try:
            path = "/proc/sys/" + self.forwarding_sysctl.replace(".", "/")
            with open(path, encoding="ascii") as handle:
                return handle.read().strip() == "1"
        except OSError:
            return False


IPV4 = Family("4", "ip", "ipv4_addr", 28, "ip frag-off & 0x3fff == 0", "net.ipv4.ip_forward")
IPV6 = Family("6", "ip6", "ipv6_addr", 48, "exthdr frag missing", "net.ipv6.conf.all.forwarding")
FAMILIES = (IPV4, IPV6)


def family_of_host(host: str) -> Family:
    """The family of a numeric address."""
    return IPV6 if ":" in host else IPV4


class NftError(RuntimeError):
    """nftables refused a command (or libnftables is missing)."""


class MissingCapability(NftError):
    """The process may not change nftables (no CAP_NET_ADMIN)."""


class Nftables:
    """libnftables through ctypes: one context, commands as text, output captured."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise NftError(
                f"cannot load libnftables ({exc}); install the nftables package"
            ) from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for setter in (lib.nft_ctx_buffer_output, lib.nft_ctx_buffer_error):
            setter.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for getter in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
            getter.argtypes = [ctypes.c_void_p]
            getter.restype = ctypes.c_char_p
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("libnftables could not create a context")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        lib.nft_ctx_output_set_flags(self._ctx, _OUTPUT_NO_SERVICE_NAMES)

    def run(self, commands: str) -> bytes:
        """Run nft commands (one transaction); return the output, raise :class:`NftError`."""
        lib = self._lib
        status = lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
        output: bytes = lib.nft_ctx_get_output_buffer(self._ctx) or b""
        if status != 0:
            error: bytes = lib.nft_ctx_get_error_buffer(self._ctx) or b""
            raise NftError(error.decode(errors="replace").strip() or f"nft status {status}")
        return output

    def close(self) -> None:
        """Free the context."""
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (nftables needs it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


def check_table_name(name: str) -> str:
    """An nftables table name the relay may own; raise ValueError otherwise."""
    if not _TABLE_NAME.fullmatch(name):
        raise ValueError(f"bad nftables table name {name!r} (letters, digits, _; 32 at most)")
    return name


def default_table_name() -> str:
    """This process's own table: two relays on one host never share one."""
    return f"{TABLE_PREFIX}{os.getpid()}"


def _family_rules(family: Family, tos: int) -> tuple[str, str]:
    """The rewrite of the destination (before routing) and of the source (after it)."""
    l3, n = family.l3, family.suffix
    arrived = f"{l3} saddr . udp sport . udp dport"
    # every lookup is keyed on fields not yet rewritten, or on the relay's own (unique) port
    rewrite_destination = (
        f"{family.unfragmented} {arrived} @inbound{n} notrack "
        f"{l3} daddr set {arrived} map @in_addr{n} "
        f"udp sport set {arrived} map @in_sport{n} "
        f"udp dport set {arrived} map @in_dport{n}"
    )
    rewrite_source = (
        f"{l3} saddr set {l3} saddr . udp sport . {l3} daddr . udp dport map @out_addr{n} "
        f"{l3} dscp set {tos >> 2}"
    )
    return rewrite_destination, rewrite_source


def table_definition(table: str, tos: int) -> str:
    """The relay's table (owned by its netlink socket): empty sets and maps per family,
    and the four hooks that consult them."""
    declarations: list[str] = []
    destination: list[str] = []
    source: list[str] = []
    for family in FAMILIES:
        n, addr = family.suffix, family.address_type
        key3 = f"{addr} . inet_service . inet_service"
        key4 = f"{addr} . inet_service . {addr} . inet_service"
        declarations += [
            f"set inbound{n} {{ type {key3}; counter; }}",
            f"map in_addr{n} {{ type {key3} : {addr}; }}",
            f"map in_sport{n} {{ type {key3} : inet_service; }}",
            f"map in_dport{n} {{ type {key3} : inet_service; }}",
            f"map out_addr{n} {{ type {key4} : {addr}; }}",
        ]
        rewrite_destination, rewrite_source = _family_rules(family, tos)
        destination.append(rewrite_destination)
        source.append(rewrite_source)
    before, after = "; ".join(destination), "; ".join(source)
    body = "\n  ".join(declarations)
    return f"""table inet {table} {{
  flags owner;
  comment "pyrtpproxy pid {os.getpid()}";
  {body}
  chain prerouting {{ type filter hook prerouting priority raw; {before}; }}
  chain output {{ type route hook output priority raw; {before}; }}
  chain postrouting {{ type filter hook postrouting priority 110; {after}; }}
  chain input {{ type filter hook input priority 110; {after}; }}
}}
"""


def _canonical(host: str) -> str:
    """The form nftables prints an address in."""
    return ipaddress.ip_address(host).compressed


@dataclass(slots=True)
class Offload:
    """One stream direction handed to the kernel."""

    stream: Stream
    source: Endpoint  # the latched party
    local_port: int  # the stream's own port
    dest: Endpoint  # the peer's party
    out_from: Endpoint  # the peer stream's local address and port
    base_seq: int
    packets: int = 0
    bytes: int = 0
    read_at: float = float("-inf")
    family: Family = field(init=False)
    key: str = field(init=False)  # the element of the inbound set, as nft prints it

    def __post_init__(self) -> None:
        self.family = family_of_host(self.source.host)
        self.key = f"{_canonical(self.source.host)} . {self.source.port} . {self.local_port}"

    def elements(self, verb: str, table: str) -> str:
        """``add``/``delete`` commands for this direction's map elements."""
        key = self.key
        src, dst, out = self.source, self.dest, self.out_from
        with_value = verb == "add"
        n = self.family.suffix

        def element(name: str, elem_key: str, value: object) -> str:
            data = f" : {value}" if with_value else ""
            return f"{verb} element inet {table} {name}{n} {{ {elem_key}{data} }}"

        return "\n".join(
            (
                element("in_addr", key, dst.host),
                element("in_sport", key, out.port),
                element("in_dport", f"{src.host} . {out.port} . {self.local_port}", dst.port),
                element("out_addr", f"{src.host} . {out.port} . {dst.host} . {dst.port}", out.host),
                f"{verb} element inet {table} inbound{n} {{ {key} }}",
            )
        )


class KernelForwarder:
    """Adds and removes kernel-forwarded stream directions; folds their counters back.

    Changes are batched: :meth:`offload` and :meth:`withdraw` queue them, and one call
    scheduled with ``schedule`` applies the whole batch (two nftables transactions).

    When nftables stops answering for the table (it was deleted, the counters cannot be
    read), the forwarder gives up for the rest of the run: :attr:`enabled` turns False,
    the streams it held go on in user space (their packets reach the relay's sockets
    again), and later offers are declined.
    """

    def __init__(
        self,
        nft: Nftables,
        table: str,
        tos: int,
        schedule: Callable[[Callable[[], None]], object],
        counters: Counters,
        clock: Callable[[], float],
    ) -> None:
        self.nft = nft
        self.counters = counters
        self._clock = clock
        self.table = check_table_name(table)
        self.tos = tos
        self._schedule = schedule
        self._active: dict[Stream, Offload] = {}
        self._to_add: dict[Stream, Offload] = {}
        self._to_delete: list[Offload] = []
        self._refused: set[Stream] = set()
        self._flush_pending = False
        self._routing: dict[Family, bool] = {}  # the forwarding sysctls, read by start()
        self._failure_logged = False
        self.enabled = False

    # --- table -------------------------------------------------------------------------

    def start(self) -> None:
        """Create the table (replacing a stale one of the same name, never one a running
        process owns), and note which families the host routes between other hosts."""
        self._routing = {family: family.routes_between_hosts() for family in FAMILIES}
        self._remove_stale_table()
        self.nft.run(table_definition(self.table, self.tos))
        self.enabled = True

    def _remove_stale_table(self) -> None:
        """A table of our name without the owner flag is no relay's now (an earlier
        version's, or made by hand): it goes. One with the flag has a live owner."""
        try:
            listing = self.nft.run(f"list table inet {self.table}")
        except NftError:
            return  # none: the usual case
        if b"flags owner" in listing:
            holder = re.search(rb"# progname (\S+)", listing)
            raise NftError(
                f"table inet {self.table} belongs to another running process"
                + (f" ({holder.group(1).decode(errors='replace')})" if holder else "")
                + "; give this relay another --nft-table"
            )
        log.warning("removing the stale nftables table inet %s", self.table)
        self.nft.run(f"delete table inet {self.table}")

    def unrouted_families(self) -> list[str]:
        """The forwarding sysctls that are off (media between two other hosts of that
        family stays in user space)."""
        return [f.forwarding_sysctl for f in FAMILIES if not self._routing.get(f, False)]

    def routes_between_hosts(self, ipv6: bool) -> bool:
        """Whether the kernel may forward a stream between two other hosts."""
        return self._routing.get(IPV6 if ipv6 else IPV4, False)

    def stop(self) -> None:
        """Fold the last counts into the streams and delete the table."""
        self._flush_pending = False
        self._to_add.clear()
        self._to_delete.extend(self._active.values())
        self._active.clear()
        if self.enabled:
            self._fold_final_counts()
            try:
                self.nft.run(f"delete table inet {self.table}")
            except NftError as exc:
                log.error("cannot delete nftables table inet %s: %s", self.table, exc)
        self._to_delete.clear()
        self.enabled = False
        self.nft.close()  # the kernel drops an owned table with its socket in any case

    # --- streams -----------------------------------------------------------------------

    def holds(self, stream: Stream) -> bool:
        """Whether ``stream`` is kernel-forwarded (or about to be), or was refused."""
        return stream in self._active or stream in self._to_add or stream in self._refused

    @property
    def forwarded_streams(self) -> int:
        """Stream directions the kernel forwards now."""
        return len(self._active)

    def offload(
        self, stream: Stream, source: Endpoint, local_port: int, dest: Endpoint, out_from: Endpoint
    ) -> None:
        """Hand ``stream`` (packets from ``source`` to ``local_port``) to the kernel."""
        if not self.enabled or self.holds(stream):
            return
        self._to_add[stream] = Offload(stream, source, local_port, dest, out_from, stream.last_seq)
        self._request_flush()

    def withdraw(self, stream: Stream) -> None:
        """Take ``stream`` back into user space (its addresses changed or it closed)."""
        self._refused.discard(stream)
        if self._to_add.pop(stream, None) is not None:
            return
        offload = self._active.pop(stream, None)
        if offload is not None:
            self._to_delete.append(offload)
            self._request_flush()

    def _request_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._schedule(self.flush)

    def _failed(self, what: str, exc: NftError) -> None:
        """Count a refusal; log the first one of the run (a broken nftables would
        otherwise log once per call set-up)."""
        self.counters.relay.kernel_failures += 1
        if self._failure_logged:
            log.debug("%s: %s", what, exc)
            return
        self._failure_logged = True
        log.error(
            "%s: %s (further nftables failures are only counted: pyrtpproxy_kernel_failures_total)",
            what,
            exc,
        )

    def flush(self) -> None:
        """Apply the queued removals, then the queued additions."""
        if not self._flush_pending:
            return
        self._flush_pending = False
        if self._to_delete:
            self._fold_final_counts()
            removed = list(self._to_delete)
            self._to_delete.clear()
            try:
                self.nft.run("\n".join(o.elements("delete", self.table) for o in removed))
            except NftError as exc:
                self._failed("nftables refused to remove forwarded streams", exc)
                self._delete_one_by_one(removed)
        if self._to_add:
            batch = list(self._to_add.values())
            self._to_add.clear()
            try:
                self.nft.run("\n".join(o.elements("add", self.table) for o in batch))
            except NftError as exc:
                self._refused.update(o.stream for o in batch)
                self._failed(
                    f"nftables refused {len(batch)} stream(s); they stay in user space", exc
                )
                return
            for offload in batch:
                self._active[offload.stream] = offload

    def _delete_one_by_one(self, removed: list[Offload]) -> None:
        """After a refused batch (an element already gone, say), remove what is left:
        a stale element would go on forwarding to the old address."""
        for offload in removed:
            for command in offload.elements("delete", self.table).splitlines():
                with contextlib.suppress(NftError):
                    self.nft.run(command)

    def _give_up(self, exc: NftError) -> None:
        """The table is unusable: every stream goes on in user space, for the rest of
        the run (the packets the kernel relayed since the last read are not counted)."""
        self.counters.relay.kernel_failures += 1
        self.enabled = False
        streams = len(self._active) + len(self._to_add)
        self._active.clear()
        self._to_add.clear()
        self._to_delete.clear()
        self._refused.clear()
        with contextlib.suppress(NftError):  # what may be left must not forward on
            self.nft.run(f"delete table inet {self.table}")
        log.error(
            "kernel forwarding: off from now on (nftables table inet %s: %s); "
            "%d stream direction(s) go on in user space",
            self.table,
            exc,
            streams,
        )

    # --- counters ----------------------------------------------------------------------

    def sync(self) -> None:
        """Fold the kernel's per-stream counters into the streams (one nftables dump
        per address family in use)."""
        self.flush()
        if not self._active:
            return
        by_key = {o.key: o for o in self._active.values()}
        for family in {o.family for o in self._active.values()}:
            try:
                listing = self.nft.run(f"list set inet {self.table} inbound{family.suffix}")
            except NftError as exc:
                self._give_up(exc)
                return
            self._fold(listing, by_key)

    def refresh(self, stream: Stream, now: float) -> None:
        """Before a stranger's packet is judged: bring the stream's sequence estimate up
        to date (at most every :data:`STRANGER_READ_INTERVAL`, so a flood costs little)."""
        offload = self._active.get(stream)
        if offload is None or now - offload.read_at < STRANGER_READ_INTERVAL:
            return
        offload.read_at = now
        self._read({offload.key: offload})

    def _fold_final_counts(self) -> None:
        """Read the counters of the directions about to be removed."""
        self._read({o.key: o for o in self._to_delete})

    def _read(self, by_key: dict[str, Offload]) -> None:
        if not by_key:
            return
        keys: dict[Family, list[str]] = {}
        for key, offload in by_key.items():
            keys.setdefault(offload.family, []).append(key)
        commands = "\n".join(
            f"get element inet {self.table} inbound{family.suffix} {{ {', '.join(listed)} }}"
            for family, listed in keys.items()
        )
        try:
            listing = self.nft.run(commands)
        except NftError as exc:
            self._failed("cannot read kernel-forwarded counters", exc)
            return
        self._fold(listing, by_key)

    def _fold(self, listing: bytes, by_key: dict[str, Offload]) -> None:
        now = self._clock()
        for host, sport, dport, packets_text, bytes_text in _COUNTED.findall(listing):
            address = host.decode()
            if ":" in address:
                address = _canonical(address)
            offload = by_key.get(f"{address} . {int(sport)} . {int(dport)}")
            if offload is None:
                continue
            packets, size = int(packets_text), int(bytes_text)
            new_packets = packets - offload.packets
            if new_packets <= 0:
                continue
            stream = offload.stream
            payload = size - offload.bytes - offload.family.headers * new_packets
            offload.packets, offload.bytes = packets, size
            # the relay no longer sees sequence numbers; re-latching by SSRC compares
            # against this estimate (one number per forwarded packet)
            seq = None if stream.is_rtcp else (offload.base_seq + packets) & 0xFFFF
            self.counters.forwarded(stream, new_packets, payload, seq, now)


def open_forwarder(
    table: str,
    tos: int,
    schedule: Callable[[Callable[[], None]], object],
    counters: Counters,
    clock: Callable[[], float],
) -> KernelForwarder:
    """A started forwarder with its table; :class:`NftError` says why there is none."""
    if not has_net_admin():
        raise MissingCapability("no CAP_NET_ADMIN")
    forwarder = KernelForwarder(Nftables(), table, tos, schedule, counters, clock)
    try:
        forwarder.start()
    except NftError:
        forwarder.nft.close()
        raise
    return forwarder
