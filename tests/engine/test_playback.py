"""The pure player (media-features.md §3.3): packet sizes, timestamps, marker, sequence,
repeats, loops, the end of the file and a listener not known yet, on an injected clock."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrtpproxy.engine.events import Outbox
from pyrtpproxy.engine.playback import MAX_LATENESS, Player, Players
from pyrtpproxy.engine.session import Leg, Session


def _leg() -> Leg:
    return Session(b"c", b"t", 0.0, Outbox(lambda event: None)).legs[1]


def _player(
    prompt: bytes, pt: int = 0, count: int = 1, ptime: int | None = None, seed: int = 7
) -> Player:
    return Player(_leg(), prompt, pt, count, ptime, random.Random(seed))


def _header(packet: bytes) -> tuple[int, bool, int, int, int, int]:
    """(version, marker, pt, seq, ts, ssrc)."""
    first, second, seq, ts, ssrc = struct.unpack("!BBHII", packet[:12])
    return first >> 6, bool(second & 0x80), second & 0x7F, seq, ts, ssrc


def _play_all(players: Players, start: float, step: float, until: float) -> list[bytes]:
    """Run the players' timer every ``step`` seconds from ``start`` up to ``until``."""
    packets: list[bytes] = []
    now = start
    while now <= until:
        packets += [packet for _player, packet in players.run_due(now).packets]
        now = round(now + step, 6)
    return packets


@pytest.mark.parametrize(
    ("pt", "ptime", "size", "ts_step", "ms"),
    [
        (0, None, 80, 80, 10),  # PCMU: 1 ms = 8 bytes
        (8, None, 80, 80, 10),  # PCMA
        (9, None, 80, 80, 10),  # G.722 on its 8 kHz RTP clock
        (18, None, 10, 80, 10),  # G.729: one 10 ms frame
        (3, None, 33, 160, 20),  # GSM: one 20 ms frame
        (4, None, 24, 240, 30),  # G.723: one 30 ms frame
        (0, 30, 240, 240, 30),  # P … session after Lz30
        (3, 25, 66, 320, 40),  # ceil(25 / 20) = 2 GSM frames
        (18, 25, 30, 240, 30),
        (4, 10, 24, 240, 30),  # never less than one frame
    ],
)
def test_every_codec_row_of_the_table(
    pt: int, ptime: int | None, size: int, ts_step: int, ms: int
) -> None:
    prompt = bytes(range(256)) * 4  # 1024 bytes
    player = _player(prompt, pt, ptime=ptime)
    players = Players()
    players.add(player, 100.0)
    assert players.next_deadline() == 100.0
    first = players.run_due(100.0).packets
    assert len(first) == 1  # the first packet at once
    assert players.next_deadline() == pytest.approx(100.0 + ms / 1000)
    rest = _play_all(players, 100.0 + ms / 1000, ms / 1000, 100.0 + 10.0)
    packets = [first[0][1], *rest]
    assert len(packets) == len(prompt) // size  # the trailing piece is dropped
    assert [len(p) - 12 for p in packets] == [size] * len(packets)
    assert b"".join(p[12:] for p in packets) == prompt[: len(packets) * size]
    headers = [_header(p) for p in packets]
    assert {(h[0], h[2], h[5]) for h in headers} == {(2, pt, player.ssrc)}
    assert [h[1] for h in headers] == [True] + [False] * (len(packets) - 1)
    assert headers[0][4] % 2 == 0  # the initial timestamp is even
    for before, after in itertools.pairwise(headers):
        assert after[3] == (before[3] + 1) & 0xFFFF
        assert after[4] == (before[4] + ts_step) & 0xFFFFFFFF
    assert packets[0][0] & 0x3F == 0  # no padding, extension or CSRC


def test_pacing_follows_the_grid_from_the_first_packet() -> None:
    players = Players()
    player = _player(bytes(800))  # 10 packets of 10 ms
    players.add(player, 5.0)
    times = []
    while (deadline := players.next_deadline()) is not None:
        out = players.run_due(deadline)
        times += [deadline] * len(out.packets)
        if out.finished:
            break
    assert times == pytest.approx([5.0 + k * 0.01 for k in range(10)])
    assert players.next_deadline() is None and len(players) == 0


def test_nothing_is_sent_before_it_is_due_and_a_late_timer_catches_up() -> None:
    players = Players()
    players.add(_player(bytes(8000)), 0.0)
    assert len(players.run_due(0.0).packets) == 1
    assert players.run_due(0.0099).packets == []
    assert len(players.run_due(0.035).packets) == 3  # 10, 20 and 30 ms


def test_a_long_stall_skips_ahead_instead_of_bursting() -> None:
    players = Players()
    player = _player(bytes(80_000))
    players.add(player, 0.0)
    players.run_due(0.0)
    out = players.run_due(MAX_LATENESS + 5.0)
    assert len(out.packets) == 1  # not 520 at once
    assert players.next_deadline() == pytest.approx(MAX_LATENESS + 5.01)
    _v, _m, _pt, seq0, ts0, _s = _header(out.packets[0][1])
    later = players.run_due(MAX_LATENESS + 5.01).packets[0][1]
    assert _header(later)[3:5] == ((seq0 + 1) & 0xFFFF, (ts0 + 80) & 0xFFFFFFFF)


def test_an_8050_byte_file_gives_100_packets() -> None:
    players = Players()
    players.add(_player(bytes(8050), pt=8), 0.0)
    packets = _play_all(players, 0.0, 0.01, 2.0)
    assert len(packets) == 100


def test_repeats_restart_the_file_and_keep_the_sequence() -> None:
    prompt = bytes(range(200)) * 4 + b"tail"  # 804 bytes: 10 packets and a piece
    players = Players()
    player = _player(prompt, count=3)
    players.add(player, 0.0)
    packets = _play_all(players, 0.0, 0.01, 1.0)
    assert len(packets) == 30
    assert b"".join(p[12:] for p in packets) == prompt[:800] * 3
    seqs = [_header(p)[3] for p in packets]
    assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(30)]
    assert [_header(p)[1] for p in packets].count(True) == 1  # marker only on the very first
    assert len(players) == 0


def test_a_negative_count_loops_until_removed() -> None:
    players = Players()
    player = _player(bytes(160), count=-2)  # 2 packets per play
    players.add(player, 0.0)
    packets = _play_all(players, 0.0, 0.01, 9.995)
    assert len(packets) == 1000 and len(players) == 1
    players.remove(player)
    assert players.next_deadline() is None
    assert players.run_due(20.0).packets == []


def test_end_of_file_finishes_the_player() -> None:
    players = Players()
    player = _player(bytes(160))
    players.add(player, 0.0)
    assert len(players.run_due(0.0).packets) == 1
    out = players.run_due(0.01)
    assert len(out.packets) == 1 and out.finished == []
    out = players.run_due(0.02)
    assert out.packets == [] and out.finished == [player]
    assert players.next_deadline() is None


@pytest.mark.parametrize("size", [0, 79])
def test_a_file_shorter_than_one_packet_sends_nothing(size: int) -> None:
    players = Players()
    player = _player(bytes(size), count=-1)
    players.add(player, 0.0)
    out = players.run_due(0.0)
    assert out.packets == [] and out.finished == [player]


def test_a_waiting_player_starts_when_its_listener_is_known() -> None:
    players = Players()
    player = _player(bytes(800))
    players.add(player, None)
    assert not player.started and players.next_deadline() is None
    assert players.run_due(100.0).packets == []
    players.start(player, 42.0)
    assert players.next_deadline() == 42.0
    assert len(players.run_due(42.0).packets) == 1
    players.start(player, 50.0)  # already started: no effect
    assert players.next_deadline() == pytest.approx(42.01)


def test_a_type_it_cannot_packetize_never_sends() -> None:
    players = Players()
    player = _player(bytes(8000), pt=96)
    players.add(player, 0.0)
    assert not player.playable
    assert players.next_deadline() is None
    assert players.run_due(10.0).packets == []
    assert len(players) == 1  # it stays (and mutes) until stopped


def test_one_heap_interleaves_many_players() -> None:
    players = Players()
    a, b = _player(bytes(800), seed=1), _player(bytes(24 * 4), pt=4, seed=2)
    players.add(a, 0.0)
    players.add(b, 0.005)
    order = []
    while (deadline := players.next_deadline()) is not None:
        order += [(round(deadline, 3), p is a) for p, _ in players.run_due(deadline).packets]
    assert order[:4] == [(0.0, True), (0.005, False), (0.01, True), (0.02, True)]
    assert sum(1 for _t, is_a in order if is_a) == 10
    assert sum(1 for _t, is_a in order if not is_a) == 4
    assert a.ssrc != b.ssrc


def test_a_removed_player_leaves_the_others_alone() -> None:
    players = Players()
    a, b = _player(bytes(800), seed=1), _player(bytes(800), seed=2)
    players.add(a, 0.0)
    players.add(b, 0.0)
    players.run_due(0.0)
    players.remove(a)
    got = players.run_due(0.01).packets
    assert [p for p, _ in got] == [b]


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 3000),
    pt=st.sampled_from([0, 8, 9, 18, 3, 4]),
    ptime=st.one_of(st.none(), st.integers(1, 120)),
    count=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_what_is_sent_is_the_file_cut_into_whole_packets(
    size: int, pt: int, ptime: int | None, count: int, seed: int
) -> None:
    prompt = random.Random(seed).randbytes(size)
    player = _player(prompt, pt, count, ptime, seed)
    players = Players()
    players.add(player, 0.0)
    packets: list[bytes] = []
    finished = False
    for _ in range(10_000):
        deadline = players.next_deadline()
        if deadline is None:
            break
        out = players.run_due(deadline)
        packets += [p for _, p in out.packets]
        finished = finished or bool(out.finished)
    assert finished
    per_play = size // player.packet_bytes
    assert len(packets) == per_play * count
    assert b"".join(p[12:] for p in packets) == prompt[: per_play * player.packet_bytes] * count
    ts = [_header(p)[4] for p in packets]
    step = 8 * player.packet_ms
    assert all((b - a) & 0xFFFFFFFF == step for a, b in itertools.pairwise(ts))
