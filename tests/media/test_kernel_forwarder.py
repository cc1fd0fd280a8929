"""KernelForwarder's bookkeeping against a stand-in for libnftables: batching, counters
folded into the streams, the sequence estimate, refusals. The real kernel path is covered
by tests/integration/test_kernel_forward.py (root, own namespace)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrtpproxy.engine.addresses import Endpoint
from pyrtpproxy.engine.counters import Counters
from pyrtpproxy.engine.events import Outbox
from pyrtpproxy.engine.session import Session, Stream
from pyrtpproxy.media.kernel import KernelForwarder, NftError, table_definition

CALLER = Endpoint("192.0.2.10", 40000)
CALLEE = Endpoint("198.51.100.20", 50000)
OUT = Endpoint("203.0.113.1", 30002)


class FakeNft:
    """Records command batches; answers listings with the counters set in ``counts``."""

    def __init__(self) -> None:
        self.batches: list[str] = []
        self.counts: dict[str, tuple[int, int]] = {}
        self.refuse_adds = False
        self.refuse_batches_of_deletes = False
        self.table_listing: bytes | None = None  # what "list table" finds; None: no table
        self.table_gone = False

    def run(self, commands: str) -> bytes:
        self.batches.append(commands)
        if commands.startswith("list table"):
            if self.table_listing is None:
                raise NftError("Error: No such file or directory")
            return self.table_listing
        if self.table_gone and not commands.startswith(("add table", "table")):
            raise NftError("Error: No such file or directory")
        if commands.startswith(("list set", "get element")):
            body = ",\n".join(
                f"{key} counter packets {p} bytes {b}" for key, (p, b) in self.counts.items()
            )
            return f"table inet t {{ set inbound4 {{ elements = {{ {body} }} }} }}".encode()
        if self.refuse_adds and commands.startswith("add element"):
            raise NftError("Error: Could not process rule: File exists")
        if self.refuse_batches_of_deletes and commands.count("delete element") > 1:
            raise NftError("Error: Could not process rule: No such file or directory")
        return b""

    def close(self) -> None:
        self.batches.append("(closed)")


def forwarder(
    nft: FakeNft | None = None,
) -> tuple[KernelForwarder, FakeNft, list[Callable[[], None]]]:
    nft = nft or FakeNft()
    scheduled: list[Callable[[], None]] = []
    kernel = KernelForwarder(
        nft,  # type: ignore[arg-type]
        "t",
        0xB8,
        scheduled.append,
        Counters(),
        lambda: 7.0,
    )
    kernel.start()
    nft.batches.clear()
    return kernel, nft, scheduled


def stream() -> Stream:
    return Session(b"call", b"tag", 0.0, Outbox(lambda event: None)).legs[0].rtp


def test_offloads_of_one_wakeup_go_in_one_transaction() -> None:
    kernel, nft, scheduled = forwarder()
    first, second = stream(), stream()
    kernel.offload(first, CALLER, 30000, CALLEE, OUT)
    kernel.offload(second, CALLER, 30004, CALLEE, Endpoint(OUT.host, 30006))
    assert len(scheduled) == 1 and nft.batches == []
    scheduled[0]()
    assert len(nft.batches) == 1
    batch = nft.batches[0]
    assert batch.count("add element") == 10
    assert "add element inet t in_addr4 { 192.0.2.10 . 40000 . 30000 : 198.51.100.20 }" in batch
    assert "add element inet t in_sport4 { 192.0.2.10 . 40000 . 30000 : 30002 }" in batch
    assert "add element inet t in_dport4 { 192.0.2.10 . 30002 . 30000 : 50000 }" in batch
    assert (
        "add element inet t out_addr4 { 192.0.2.10 . 30002 . 198.51.100.20 . 50000 : 203.0.113.1 }"
    ) in batch
    assert kernel.forwarded_streams == 2


def test_withdraw_before_the_flush_sends_nothing() -> None:
    kernel, nft, scheduled = forwarder()
    s = stream()
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)
    kernel.withdraw(s)
    scheduled[0]()
    assert nft.batches == []
    assert not kernel.holds(s)


def test_counters_are_folded_without_headers_and_the_last_count_survives_removal() -> None:
    kernel, nft, scheduled = forwarder()
    s = stream()
    s.last_seq = 100
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)
    scheduled[0]()
    nft.counts["192.0.2.10 . 40000 . 30000"] = (10, 10 * (172 + 28))
    kernel.sync()
    assert (s.packets_relayed, s.bytes_relayed, s.last_seq) == (10, 1720, 110)
    kernel.sync()  # the same counters again add nothing
    assert s.packets_relayed == 10
    nft.counts["192.0.2.10 . 40000 . 30000"] = (15, 15 * 200)
    kernel.withdraw(s)
    scheduled[-1]()
    assert s.packets_relayed == 15 and s.bytes_relayed == 15 * 172
    assert nft.batches[-1].count("delete element") == 5
    assert not kernel.holds(s)


@given(base=st.integers(0, 65535), forwarded=st.integers(0, 200_000))
def test_sequence_estimate_wraps(base: int, forwarded: int) -> None:
    kernel, nft, scheduled = forwarder()
    s = stream()
    s.last_seq = base
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)
    scheduled[0]()
    nft.counts["192.0.2.10 . 40000 . 30000"] = (forwarded, forwarded * 200)
    kernel.sync()
    assert s.last_seq == (base + forwarded) % 65536


def test_a_refused_stream_stays_in_user_space_until_its_addresses_change() -> None:
    kernel, nft, scheduled = forwarder()
    nft.refuse_adds = True
    s = stream()
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)
    scheduled[0]()
    assert kernel.counters.relay.kernel_failures == 1 and kernel.forwarded_streams == 0
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)  # no retry per packet
    assert len(scheduled) == 1
    kernel.withdraw(s)  # a new address: it may be tried again
    nft.refuse_adds = False
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)
    scheduled[-1]()
    assert kernel.forwarded_streams == 1


def test_strangers_read_the_counters_at_most_twice_a_second() -> None:
    kernel, nft, scheduled = forwarder()
    s = stream()
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)
    scheduled[0]()
    for tick in range(100):  # a flood: 100 strangers' packets in one second
        kernel.refresh(s, 10.0 + tick / 100)
    reads = [b for b in nft.batches if b.startswith("get element")]
    assert len(reads) == 2


def test_a_refused_removal_is_retried_element_by_element() -> None:
    kernel, nft, scheduled = forwarder()
    s = stream()
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)
    scheduled[0]()
    nft.refuse_batches_of_deletes = True
    kernel.withdraw(s)
    scheduled[-1]()
    singles = [b for b in nft.batches if b.startswith("delete element") and "\n" not in b]
    assert len(singles) == 5 and kernel.counters.relay.kernel_failures == 1


def test_forwarded_packets_count_as_activity_and_late_ones_reach_the_totals() -> None:
    kernel, nft, scheduled = forwarder()
    s = stream()
    s.leg.session.created = True
    kernel.offload(s, CALLER, 30000, CALLEE, OUT)
    scheduled[0]()
    nft.counts["192.0.2.10 . 40000 . 30000"] = (4, 4 * 200)
    kernel.sync()
    assert s.seen_at == 7.0  # the clock of the read: the idle timer sees kernel traffic
    totals = kernel.counters.g
    assert (totals.npkts_rcvd, totals.npkts_relayed) == (0, 0)  # live: counted on the stream
    s.leg.session.ended = True  # the engine has already added up the session
    nft.counts["192.0.2.10 . 40000 . 30000"] = (6, 6 * 200)
    kernel.withdraw(s)
    scheduled[-1]()
    assert (totals.npkts_rcvd, totals.npkts_relayed) == (2, 2)
    assert kernel.counters.relay.bytes_relayed == 2 * 172


CALLER6 = Endpoint("2001:db8::10", 40000)
CALLEE6 = Endpoint("2001:db8:1::20", 50000)
OUT6 = Endpoint("2001:db8::1", 30002)


def test_ipv6_streams_use_the_ipv6_maps_and_their_counters_lose_48_header_bytes() -> None:
    kernel, nft, scheduled = forwarder()
    s = stream()
    kernel.offload(s, Endpoint("2001:DB8:0::10", 40000), 30000, CALLEE6, OUT6)
    scheduled[0]()
    batch = nft.batches[0]
    # the key as nft prints it, whatever form the address came in
    assert "add element inet t in_addr6 { 2001:db8::10 . 40000 . 30000 : 2001:db8:1::20 }" in batch
    assert "add element inet t inbound6 { 2001:db8::10 . 40000 . 30000 }" in batch
    assert "4 {" not in batch  # nothing in the IPv4 maps
    nft.counts["2001:db8::10 . 40000 . 30000"] = (3, 3 * (172 + 48))
    kernel.sync()
    assert nft.batches[-1] == "list set inet t inbound6"
    assert (s.packets_relayed, s.bytes_relayed) == (3, 3 * 172)
    assert kernel.counters.relay.kernel_packets == 3


def test_the_table_has_both_families_and_belongs_to_the_relay() -> None:
    text = table_definition("t", 0xB8)
    assert text.startswith("table inet t {\n  flags owner;")
    for name in ("inbound", "in_addr", "in_sport", "in_dport", "out_addr"):
        assert f" {name}4 " in text and f" {name}6 " in text
    assert "ip6 daddr set ip6 saddr . udp sport . udp dport map @in_addr6" in text
    assert "exthdr frag missing" in text and "ip6 dscp set 46" in text


def test_a_table_a_running_process_owns_is_not_touched() -> None:
    owned = FakeNft()
    owned.table_listing = b"table inet t { # progname pyrtpproxy\n\tflags owner\n}\n"
    with pytest.raises(NftError, match=r"belongs to another running process \(pyrtpproxy\)"):
        forwarder(owned)
    assert owned.batches == ["list table inet t"]


def test_start_deletes_the_stale_table_before_creating_its_own() -> None:
    nft = FakeNft()
    nft.table_listing = b"table inet t {\n}\n"
    kernel = KernelForwarder(nft, "t", 0xB8, lambda f: None, Counters(), lambda: 0.0)  # type: ignore[arg-type]
    kernel.start()
    assert nft.batches[:2] == ["list table inet t", "delete table inet t"]
    assert nft.batches[2].startswith("table inet t {")
    assert kernel.enabled


def test_refusals_are_counted_each_time_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    kernel, nft, scheduled = forwarder()
    nft.refuse_adds = True
    with caplog.at_level(logging.DEBUG, "pyrtpproxy.kernel"):
        for port in (30000, 30004, 30008):
            kernel.offload(stream(), CALLER, port, CALLEE, OUT)
            scheduled[-1]()
    assert kernel.counters.relay.kernel_failures == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "pyrtpproxy_kernel_failures_total" in errors[0].getMessage()
    assert kernel.enabled  # a refused batch stays in user space; the rest goes on


def test_a_table_that_vanished_sends_every_stream_back_to_user_space(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kernel, nft, scheduled = forwarder()
    first, second = stream(), stream()
    kernel.offload(first, CALLER, 30000, CALLEE, OUT)
    kernel.offload(second, CALLER6, 30004, CALLEE6, OUT6)
    scheduled[0]()
    nft.table_gone = True  # nftables no longer answers for it
    with caplog.at_level(logging.ERROR, "pyrtpproxy.kernel"):
        kernel.sync()
        kernel.sync()
    assert not kernel.enabled and kernel.forwarded_streams == 0
    assert not kernel.holds(first) and not kernel.holds(second)
    assert kernel.counters.relay.kernel_failures == 1
    (message,) = (r.getMessage() for r in caplog.records)  # logged once
    assert message.startswith("kernel forwarding: off from now on (nftables table inet t")
    assert message.endswith("2 stream direction(s) go on in user space")
    assert nft.batches[-1] == "delete table inet t"  # what may be left must not forward
    kernel.offload(first, CALLER, 30000, CALLEE, OUT)  # later offers are declined
    assert len(scheduled) == 1 and not kernel.holds(first)
    kernel.stop()
    assert nft.batches[-1] == "(closed)"
