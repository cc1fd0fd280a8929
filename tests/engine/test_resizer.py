"""The re-packetizer on its own (media-features.md §4): the verified table, the rounding
of ``z``, the wait limit, late packets, pass-through types, and (hypothesis) that it
never loses or invents payload and never sends time backwards."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.resizer import TS_MOD, Resized, Resizer

SSRC = 0x11223344


def rtp(
    seq: int,
    ts: int,
    payload: bytes,
    pt: int = 0,
    marker: bool = False,
    ssrc: int = SSRC,
    extra: bytes = b"",
    first: int = 0x80,
) -> bytes:
    second = pt | (0x80 if marker else 0)
    header = struct.pack("!BBHII", first, second, seq & 0xFFFF, ts % TS_MOD, ssrc)
    return header + extra + payload


class Out:
    """One packet the re-packetizer sent, read back."""

    def __init__(self, packet: bytes, header_size: int = 12) -> None:
        first, second, self.seq, self.ts, self.ssrc = struct.unpack_from("!BBHII", packet)
        self.first = first
        self.pt = second & 0x7F
        self.marker = bool(second & 0x80)
        self.payload = packet[header_size:]


def feed(
    resizer: Resizer, packets: Iterable[bytes], spacing: float = 0.02, start: float = 0.0
) -> list[Out]:
    """Push ``packets`` at ``spacing`` seconds; everything sent, in order."""
    out: list[Out] = []
    for index, packet in enumerate(packets):
        out += [Out(p) for p in resizer.push(packet, start + index * spacing).packets]
    return out


def pcmu(count: int, size: int = 160, pt: int = 0, seq: int = 100) -> list[bytes]:
    """``count`` packets of ``size`` bytes, TS from 0; each byte says where it belongs."""
    return [
        rtp(seq + i, i * size, bytes((i * size + k) % 251 for k in range(size)), pt)
        for i in range(count)
    ]


# --- the verified table (§4.3) ---------------------------------------------------------


def test_20ms_pcmu_to_60ms() -> None:
    out = feed(Resizer(60), pcmu(12))
    assert [len(o.payload) for o in out] == [480] * 4
    assert [o.seq for o in out] == [100, 101, 102, 103]
    assert [o.ts for o in out] == [0, 480, 960, 1440]
    assert b"".join(o.payload for o in out) == b"".join(p[12:] for p in pcmu(12))


def test_60ms_pcmu_to_20ms() -> None:
    out = feed(Resizer(20), pcmu(4, 480), spacing=0.06)
    assert [len(o.payload) for o in out] == [160] * 12
    assert [o.ts for o in out] == [160 * i for i in range(12)]
    assert [o.seq for o in out] == list(range(100, 112))
    assert b"".join(o.payload for o in out) == b"".join(p[12:] for p in pcmu(4, 480))


def test_g729_20ms_to_30ms() -> None:
    packets = [rtp(100 + i, 160 * i, bytes([i]) * 20, pt=18) for i in range(6)]
    out = feed(Resizer(30), packets)
    assert [len(o.payload) for o in out] == [30] * 4
    assert [o.ts for o in out] == [0, 240, 480, 720]
    assert {o.pt for o in out} == {18}


def test_gsm_z10_is_raised_to_its_20ms_minimum_and_renumbered() -> None:
    packets = [rtp(7000 + 3 * i, 160 * i, bytes([i]) * 33, pt=3) for i in range(6)]
    out = feed(Resizer(10), packets)
    assert [len(o.payload) for o in out] == [33] * 6
    assert [o.ts for o in out] == [160 * i for i in range(6)]
    assert [o.seq for o in out] == list(range(7000, 7006))  # was 7000, 7003, ...


def test_a_payload_type_change_ends_the_packet() -> None:
    packets = [rtp(100, 0, bytes(160), pt=0)] + [
        rtp(100 + i, 160 * i, bytes([i]) * 160, pt=8) for i in range(1, 4)
    ]
    resizer = Resizer(40)
    out = feed(resizer, packets)
    assert [(o.pt, len(o.payload)) for o in out] == [(0, 160), (8, 320)]
    assert resizer.queued == 1  # the last PCMA packet waits for more


def test_the_first_output_has_the_marker_of_the_first_input() -> None:
    packets = pcmu(4)
    packets[0] = rtp(100, 0, bytes(160), marker=True)
    out = feed(Resizer(40), packets)
    assert [o.marker for o in out] == [True, False]


def test_dynamic_types_and_telephone_events_pass_unchanged() -> None:
    resizer = Resizer(40)
    for pt in (96, 101):
        packet = rtp(5, 800, bytes(160), pt=pt)
        assert resizer.push(packet, 1.0) == Resized((packet,), taken=False, discarded=0, emitted=0)
    assert resizer.queued == 0


# --- §4.1 rounding and §4.2 codecs -------------------------------------------------------


def test_z25_pcmu_packets_are_30ms() -> None:
    out = feed(Resizer(25), pcmu(9))
    assert [len(o.payload) for o in out] == [240] * 6


def test_g722_is_split_one_byte_per_timestamp_unit() -> None:
    # rtpproxy moves half the bytes (80, 80, 320, ...): here the timestamps match the audio
    packets = [rtp(100 + i, 480 * i, bytes([i]) * 480, pt=9) for i in range(3)]
    out = feed(Resizer(20), packets, spacing=0.06)
    assert [len(o.payload) for o in out] == [160] * 9
    assert [o.ts for o in out] == [160 * i for i in range(9)]
    assert b"".join(o.payload for o in out) == b"".join(p[12:] for p in packets)


def test_g729_sid_frame_ends_the_packet() -> None:
    # 20 ms of speech, a 2-byte SID, then speech again (timestamps contiguous)
    packets = [
        rtp(1, 0, b"a" * 20, pt=18),
        rtp(2, 160, b"s" * 2, pt=18),
        rtp(3, 240, b"b" * 20, pt=18),
        rtp(4, 400, b"c" * 20, pt=18),
    ]
    out = feed(Resizer(40), packets)
    assert [o.payload for o in out[:1]] == [b"a" * 20 + b"s" * 2]  # nothing after the SID
    assert out[1].ts == 240


def test_g723_frame_lengths_come_from_the_two_low_bits() -> None:
    frames = [b"\x00" + bytes(23), b"\x01" + bytes(19), b"\x02" + bytes(3)]  # 24, 20, 4
    packet = rtp(1, 0, b"".join(frames), pt=4)  # 90 ms in one packet
    out = feed(Resizer(30), [packet, rtp(2, 720, frames[1], pt=4)])
    assert [o.payload for o in out] == [*frames, frames[1]]
    assert [o.ts for o in out] == [0, 240, 480, 720]


def test_g723_with_an_invalid_frame_code_passes_unchanged() -> None:
    packet = rtp(1, 0, b"\x03" + bytes(23), pt=4)
    assert Resizer(60).push(packet, 0.0).packets == (packet,)


def test_gsm_that_is_not_whole_frames_passes_unchanged() -> None:
    packet = rtp(1, 0, bytes(34), pt=3)
    assert Resizer(40).push(packet, 0.0).packets == (packet,)


def test_empty_comfort_noise_and_unparseable_packets_pass_unchanged() -> None:
    resizer = Resizer(40)
    for packet in (
        rtp(1, 0, b""),  # empty payload
        rtp(1, 0, bytes(1), pt=13),  # comfort noise
        rtp(1, 0, bytes(160), first=0x40),  # version 1
        b"\x80\x00\x00",  # shorter than a header
        rtp(1, 0, bytes(8), first=0x90, extra=b"\x00\x00\x00\x09"),  # extension past the end
    ):
        assert resizer.push(packet, 0.0) == (
            Resized((packet,), taken=False, discarded=0, emitted=0)
        )


def test_csrcs_and_extension_are_kept_padding_is_dropped() -> None:
    csrc = struct.pack("!I", 0xCAFE)
    extension = struct.pack("!HHI", 0xBEDE, 1, 0x01020304)
    first = rtp(100, 0, b"p" * 160 + b"\x00\x00\x00\x04", first=0xB1, extra=csrc + extension)
    second = rtp(101, 160, b"q" * 160, first=0x91, extra=csrc + extension)
    resizer = Resizer(40)
    assert resizer.push(first, 0.0).packets == ()
    (out,) = resizer.push(second, 0.02).packets
    assert out == rtp(100, 0, b"p" * 160 + b"q" * 160, first=0x91, extra=csrc + extension)


# --- timing, order, sequence (§4.3 steps 1, 2, 4) ----------------------------------------


def test_a_short_queue_waits_for_the_next_arrival() -> None:
    resizer = Resizer(60)
    packets = pcmu(3)
    assert resizer.push(packets[0], 0.0).packets == ()
    assert resizer.push(packets[1], 0.02).packets == ()
    # the sender stopped: a second later its next packet lets out one 60 ms packet
    (out,) = resizer.push(packets[2], 1.0).packets
    assert len(Out(out).payload) == 480
    assert resizer.discard() == 0


def test_a_slow_sender_gets_partial_packets_through_the_wait_limit() -> None:
    out = feed(Resizer(25), pcmu(20), spacing=0.028)
    sizes = [len(o.payload) for o in out]
    assert sizes[:4] == [240] * 4
    assert sizes[-5:] == [160] * 5
    assert sum(sizes) == 160 * 20


def test_a_late_packet_is_dropped_and_counted() -> None:
    resizer = Resizer(20)
    packets = pcmu(4)
    feed(resizer, packets[:3])
    assert resizer.push(packets[1], 0.1) == Resized((), taken=True, discarded=1, emitted=0)
    assert resizer.discarded_payload == 160


def test_reordered_packets_go_out_in_timestamp_order() -> None:
    packets = pcmu(6)
    order = [packets[0], packets[2], packets[1], packets[3], packets[5], packets[4]]
    out = feed(Resizer(60), order)
    assert [o.ts for o in out] == [0, 480]
    assert b"".join(o.payload for o in out) == b"".join(p[12:] for p in packets)


def test_a_new_ssrc_resets_timing_but_not_the_sequence() -> None:
    resizer = Resizer(40)
    first = feed(resizer, pcmu(3))
    # the new source's timestamps are far "earlier": not late, a new stream
    new = [rtp(9000 + i, 5000 + 160 * i, bytes(160), ssrc=0x55) for i in range(2)]
    second = [Out(p) for p in resizer.push(new[0], 0.06).packets]
    second += [Out(p) for p in resizer.push(new[1], 0.08).packets]
    assert [(o.ssrc, o.ts, len(o.payload)) for o in first] == [(SSRC, 0, 320)]
    # the old stream's last 20 ms go out before the new one starts
    assert [(o.ssrc, o.ts, len(o.payload)) for o in second] == [
        (SSRC, 320, 160),
        (0x55, 5000, 320),
    ]
    assert [o.seq for o in first + second] == [100, 101, 102]


def test_the_sequence_wraps() -> None:
    out = feed(Resizer(20), pcmu(2, 320, seq=65535), spacing=0.04)
    assert [o.seq for o in out] == [65535, 0, 1, 2]


def test_discard_frees_the_queue() -> None:
    resizer = Resizer(60)
    feed(resizer, pcmu(2))
    assert (resizer.queued, resizer.queued_payload) == (2, 320)
    assert resizer.discard() == 2
    assert (resizer.queued, resizer.discarded_payload) == (0, 320)


def test_retarget_keeps_the_queue() -> None:
    resizer = Resizer(60)
    feed(resizer, pcmu(2))
    resizer.retarget(20)
    out = [Out(p) for p in resizer.push(pcmu(3)[2], 0.04).packets]
    assert [(o.ts, len(o.payload)) for o in out] == [(0, 160), (160, 160), (320, 160)]
    assert resizer.queued == 0


# --- properties ------------------------------------------------------------------------

G723_FRAME_BYTES = {0: 24, 1: 20, 2: 4}


def duration(pt: int, payload: bytes) -> int:
    """Samples in a payload, worked out independently of the module under test."""
    if pt == 18:
        return -(-len(payload) // 10) * 80  # a trailing SID counts as a frame
    if pt == 3:
        return len(payload) // 33 * 160
    if pt == 4:
        pos = frames = 0
        while pos < len(payload):
            pos += G723_FRAME_BYTES[payload[pos] & 3]
            frames += 1
        return frames * 240
    return len(payload)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    """A payload type and a valid payload of it, 10 to 90 ms."""
    pt = draw(st.sampled_from([0, 8, 9, 18, 3, 4]))
    if pt in (0, 8, 9):
        return pt, draw(st.binary(min_size=1, max_size=720))
    if pt == 18:
        size = 10 * draw(st.integers(1, 9))
        sid = bytes(draw(st.sampled_from([0, 2])))  # a SID frame at the end, or none
        return pt, draw(st.binary(min_size=size, max_size=size)) + sid
    if pt == 3:
        return pt, bytes([draw(st.integers(0, 255))]) * 33 * draw(st.integers(1, 4))
    codes = draw(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=3))
    return pt, b"".join(bytes([code]) + bytes(G723_FRAME_BYTES[code] - 1) for code in codes)


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[tuple[bytes, float]]]:
    """A ``z`` value and a stream of packets with jitter, pauses, reordering, overlaps,
    changes of SSRC and payload type and pass-through packets among them."""
    target = draw(st.integers(1, 200))
    packets: list[tuple[bytes, float]] = []
    ts = draw(st.integers(0, TS_MOD - 1))  # wrap-around included
    ssrc, now, seq = 1, 0.0, draw(st.integers(0, 65535))
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["audio"] * 6 + ["pass", "ssrc", "jump"]))
        if kind == "pass":
            packets.append((rtp(seq, ts, bytes(4), pt=101, ssrc=ssrc), now))
            continue
        if kind == "ssrc":
            ssrc += 1
        pt, payload = draw(payloads())
        start = ts + (draw(st.integers(-400, 400)) if kind == "jump" else 0)
        packets.append((rtp(seq, start, payload, pt=pt, ssrc=ssrc), now))
        ts = (start + duration(pt, payload)) % TS_MOD
        seq += 1
        now += draw(st.floats(0.0, 0.1))
    return target, packets


@settings(max_examples=300, deadline=None)
@given(streams())
def test_payload_is_conserved_and_time_runs_forward(
    case: tuple[int, list[tuple[bytes, float]]],
) -> None:
    target, packets = case
    resizer = Resizer(target)
    taken_in = emitted = discarded = 0
    bytes_in = bytes_out = 0
    last_end: dict[int, int] = {}
    seqs: list[int] = []
    for packet, now in packets:
        result = resizer.push(packet, now)
        built = result.packets[len(result.packets) - result.emitted :]
        if not result.taken:
            assert result.packets[0] == packet  # passed on first, unchanged
        else:
            taken_in += 1
            bytes_in += len(packet) - 12
        discarded += result.discarded
        emitted += result.emitted
        for data in built:
            out = Out(data)
            seqs.append(out.seq)
            bytes_out += len(out.payload)
            end = last_end.get(out.ssrc)
            if end is not None:  # never before the end of what this source sent last
                assert (out.ts - end) % TS_MOD < TS_MOD // 2
            last_end[out.ssrc] = (out.ts + duration(out.pt, out.payload)) % TS_MOD
    assert bytes_in == bytes_out + resizer.queued_payload + resizer.discarded_payload
    freed = resizer.discard()
    assert bytes_in == bytes_out + resizer.discarded_payload
    assert discarded + freed <= taken_in
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
