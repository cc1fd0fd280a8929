"""In-kernel forwarding of settled IPv4 streams through nftables (``--kernel-forward``).

Once a stream has latched and its peer's address is known, the relay adds a few map
elements to its own nftables table. From then on the kernel rewrites each packet from the
latched source to the stream's port (destination := the peer's address, source := the
peer stream's port) and delivers it without waking the relay. Everything else still reaches
the relay's sockets: strangers, re-latching, IPv6, asymmetric legs.

A packet arriving for the relay is matched on its source address, source port and
destination port (the relay's ports are unique, so this names one stream):

* ``inbound`` (a set with a counter per element) says "this is a kernel-forwarded
  stream" and counts its packets and bytes;
* ``in_addr``, ``in_sport`` and ``in_dport`` give the new destination address, the new
  source port (the peer stream's) and the new destination port;
* ``out_addr``, keyed on the rewritten packet (whose source port is the relay's own),
  gives the new source address. It is set after routing (postrouting, or input for a
  local party): in prerouting a local source address would make the packet look martian.

Forwarded packets are not tracked by conntrack (``notrack``), so stateful NAT rules of the
host leave them alone. Counters are folded into the streams' own counters by
:meth:`KernelForwarder.sync`, which the app calls once a second and before Q/G/I.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..engine.addresses import Endpoint
from ..engine.counters import Counters
from ..engine.session import Stream

log = logging.getLogger("pyrtpproxy.kernel")

IPV4_UDP_HEADERS = 28  # bytes the kernel counts per packet besides the UDP payload
STRANGER_READ_INTERVAL = 0.5  # seconds between counter reads that a stranger's packet causes
_OUTPUT_NO_SERVICE_NAMES = 0  # libnftables output flags: numeric ports, plain text
_COUNTED = re.compile(rb"([0-9.]+) \. (\d+) \. (\d+) counter packets (\d+) bytes (\d+)")
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


class NftError(RuntimeError):
    """nftables refused a command (or libnftables is missing)."""


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


def ipv4_forwarding_enabled() -> bool:
    """Whether this network namespace routes IPv4 between other hosts."""
    try:
        with open("/proc/sys/net/ipv4/ip_forward", encoding="ascii") as handle:
            return handle.read().strip() == "1"
    except OSError:
        return False


def check_table_name(name: str) -> str:
    """An nftables table name the relay may own; raise ValueError otherwise."""
    if not _TABLE_NAME.fullmatch(name):
        raise ValueError(f"bad nftables table name {name!r} (letters, digits, _; 32 at most)")
    return name


def table_definition(table: str, tos: int) -> str:
    """The relay's table: empty maps and the four hooks that consult them."""
    arrived = "ip saddr . udp sport . udp dport"
    # every lookup is keyed on fields not yet rewritten, or on the relay's own (unique) port
    rewrite_destination = (
        f"ip frag-off & 0x3fff == 0 {arrived} @inbound notrack "
        f"ip daddr set {arrived} map @in_addr "
        f"udp sport set {arrived} map @in_sport "
        f"udp dport set {arrived} map @in_dport"
    )
    rewrite_source = (
        "ip saddr set ip saddr . udp sport . ip daddr . udp dport map @out_addr "
        f"ip dscp set {tos >> 2}"
    )
    key3 = "ipv4_addr . inet_service . inet_service"
    key4 = "ipv4_addr . inet_service . ipv4_addr . inet_service"
    return f"""table ip {table} {{
  set inbound {{ type {key3}; counter; }}
  map in_addr {{ type {key3} : ipv4_addr; }}
  map in_sport {{ type {key3} : inet_service; }}
  map in_dport {{ type {key3} : inet_service; }}
  map out_addr {{ type {key4} : ipv4_addr; }}
  chain prerouting {{ type filter hook prerouting priority raw; {rewrite_destination}; }}
  chain output {{ type route hook output priority raw; {rewrite_destination}; }}
  chain postrouting {{ type filter hook postrouting priority 110; {rewrite_source}; }}
  chain input {{ type filter hook input priority 110; {rewrite_source}; }}
}}
"""


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

    @property
    def key(self) -> str:
        return f"{self.source.host} . {self.source.port} . {self.local_port}"

    def elements(self, verb: str, table: str) -> str:
        """``add``/``delete`` commands for this direction's map elements."""
        key = self.key
        src, dst, out = self.source, self.dest, self.out_from
        with_value = verb == "add"

        def element(name: str, elem_key: str, value: object) -> str:
            data = f" : {value}" if with_value else ""
            return f"{verb} element ip {table} {name} {{ {elem_key}{data} }}"

        return "\n".join(
            (
                element("in_addr", key, dst.host),
                element("in_sport", key, out.port),
                element("in_dport", f"{src.host} . {out.port} . {self.local_port}", dst.port),
                element("out_addr", f"{src.host} . {out.port} . {dst.host} . {dst.port}", out.host),
                f"{verb} element ip {table} inbound {{ {key} }}",
            )
        )


class KernelForwarder:
    """Adds and removes kernel-forwarded stream directions; folds their counters back.

    Changes are batched: :meth:`offload` and :meth:`withdraw` queue them, and one call
    scheduled with ``schedule`` applies the whole batch (two nftables transactions).
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
        self.routes_between_hosts = False  # net.ipv4.ip_forward, read by start()

    # --- table -------------------------------------------------------------------------

    def start(self) -> None:
        """Create the table, replacing one left over by an earlier run, and note whether
        the host forwards IPv4 (media between two other hosts needs it)."""
        self.routes_between_hosts = ipv4_forwarding_enabled()
        self.nft.run(
            f"add table ip {self.table}\ndelete table ip {self.table}\n"
            + table_definition(self.table, self.tos)
        )

    def stop(self) -> None:
        """Fold the last counts into the streams and delete the table."""
        self._flush_pending = False
        self._to_add.clear()
        self._to_delete.extend(self._active.values())
        self._active.clear()
        self._fold_final_counts()
        self._to_delete.clear()
        try:
            self.nft.run(f"delete table ip {self.table}")
        except NftError as exc:
            log.error("cannot delete nftables table %s: %s", self.table, exc)

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
        if self.holds(stream):
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
                self.counters.relay.kernel_failures += 1
                log.error("nftables refused to remove forwarded streams: %s", exc)
                self._delete_one_by_one(removed)
        if self._to_add:
            batch = list(self._to_add.values())
            self._to_add.clear()
            try:
                self.nft.run("\n".join(o.elements("add", self.table) for o in batch))
            except NftError as exc:
                self.counters.relay.kernel_failures += 1
                self._refused.update(o.stream for o in batch)
                log.error(
                    "nftables refused %d stream(s); they stay in user space: %s", len(batch), exc
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

    # --- counters ----------------------------------------------------------------------

    def sync(self) -> None:
        """Fold the kernel's per-stream counters into the streams (one nftables dump)."""
        self.flush()
        if not self._active:
            return
        try:
            listing = self.nft.run(f"list set ip {self.table} inbound")
        except NftError as exc:
            log.error("cannot read kernel-forwarded counters: %s", exc)
            return
        self._fold(listing, {o.key: o for o in self._active.values()})

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
        keys = ", ".join(by_key)
        try:
            listing = self.nft.run(f"get element ip {self.table} inbound {{ {keys} }}")
        except NftError as exc:
            log.error("cannot read kernel-forwarded counters: %s", exc)
            return
        self._fold(listing, by_key)

    def _fold(self, listing: bytes, by_key: dict[str, Offload]) -> None:
        now = self._clock()
        for host, sport, dport, packets_text, bytes_text in _COUNTED.findall(listing):
            offload = by_key.get(f"{host.decode()} . {int(sport)} . {int(dport)}")
            if offload is None:
                continue
            packets, size = int(packets_text), int(bytes_text)
            new_packets = packets - offload.packets
            if new_packets <= 0:
                continue
            stream = offload.stream
            payload = size - offload.bytes - IPV4_UDP_HEADERS * new_packets
            offload.packets, offload.bytes = packets, size
            # the relay no longer sees sequence numbers; re-latching by SSRC compares
            # against this estimate (one number per forwarded packet)
            seq = None if stream.is_rtcp else (offload.base_seq + packets) & 0xFFFF
            self.counters.forwarded(stream, new_packets, payload, seq, now)
