"""Prompt playback (``P``/``S``, media-features.md §3): packetizing and pacing, pure.

A :class:`Player` turns a prompt file's raw codec payload into RTP packets, one packet
duration apart; :class:`Players` keeps every player's next due time in one heap, so the
shell needs one timer for all of them (``Engine.get_play_timer`` /
``Engine.handle_play_timer``). Nothing here reads a clock or touches a socket: time comes
in as ``now``, packets go out as bytes, randomness comes from an injected
:class:`random.Random`.
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Leg

RTP_CLOCK_PER_MS = 8  # every codec the player knows runs an 8 kHz RTP clock
DEFAULT_PTIME_MS = 10  # a packet's duration unless P … session names a z<ms>
MAX_LATENESS = 0.2  # seconds: a player this far behind skips ahead instead of bursting
_HEADER = struct.Struct("!BBHII")
_MARKER = 0x80


@dataclass(frozen=True, slots=True)
class Codec:
    """How a payload type's raw file is cut into frames."""

    frame_bytes: int
    frame_ms: int


CODECS: dict[int, Codec] = {
    0: Codec(8, 1),  # PCMU: 1 ms = 8 bytes
    8: Codec(8, 1),  # PCMA
    9: Codec(8, 1),  # G.722: 8 bytes/ms, on an 8 kHz RTP clock
    18: Codec(10, 10),  # G.729
    3: Codec(33, 20),  # GSM
    4: Codec(24, 30),  # G.723
}


class PlayEnd(Enum):
    """Why a player stopped."""

    FINISHED = "finished"  # end of the prompt (after its last repeat)
    STOPPED = "stopped"  # S, P0, or a new P on the same leg
    SESSION_ENDED = "session ended"


class Player:
    """One prompt played to one leg's party.

    ``count`` is P's repeat count (not 0): N plays the file N times, a negative count
    loops until stopped. ``ptime_ms`` (None: 10 ms) is the wanted packet duration; a packet carries
    ceil(ptime / frame duration) frames. A payload type without a :class:`Codec` makes a
    player that never sends (rtpproxy's behaviour: the other party stays muted).
    """

    __slots__ = (
        "_marker",
        "_offset",
        "_repeats_left",
        "_sent_ms",
        "_seq",
        "_started_at",
        "_timestamp",
        "count",
        "due",
        "filed_at",
        "leg",
        "packet_bytes",
        "packet_ms",
        "payload_type",
        "prompt",
        "ssrc",
    )

    def __init__(
        self,
        leg: Leg,
        prompt: bytes,
        payload_type: int,
        count: int,
        ptime_ms: int | None,
        rng: random.Random,
    ) -> None:
        self.leg = leg
        self.prompt = prompt
        self.payload_type = payload_type
        self.count = count
        codec = CODECS.get(payload_type)
        if codec is None:
            self.packet_bytes = self.packet_ms = 0
        else:
            frames = -(-(ptime_ms or DEFAULT_PTIME_MS) // codec.frame_ms)
            self.packet_bytes = frames * codec.frame_bytes
            self.packet_ms = frames * codec.frame_ms
        self._repeats_left: int | None = count - 1 if count > 0 else None  # None: forever
        self.ssrc = rng.getrandbits(32)
        self._seq = rng.getrandbits(16)
        self._timestamp = rng.getrandbits(32) & ~1
        self._marker = True
        self._offset = 0
        self._started_at: float | None = None  # None: waiting for the listener's address
        self._sent_ms = 0
        # When the next packet is due; None while waiting or if it never sends. Kept as an
        # attribute, not computed: the prompt timer reads it for every packet it sends.
        self.due: float | None = None
        self.filed_at: float | None = None  # Players' bookkeeping: its current heap entry

    @property
    def playable(self) -> bool:
        """Whether this payload type can be packetized at all."""
        return self.packet_bytes > 0

    @property
    def started(self) -> bool:
        """Whether the player has begun pacing (its listener's address is known)."""
        return self._started_at is not None

    def start(self, now: float) -> None:
        """Begin: the first packet is due at ``now``."""
        self._started_at = now
        if self.playable:
            self.due = now

    def catch_up(self, now: float) -> None:
        """After a stall longer than :data:`MAX_LATENESS`, go on from ``now`` instead of
        sending the whole backlog at once (the RTP timestamps keep their pace)."""
        due = self.due
        if due is not None and now - due > MAX_LATENESS:
            self._started_at = now - self._sent_ms / 1000.0
            self.due = now

    def next_packet(self) -> bytes | None:
        """The next RTP packet, or None when the prompt has ended (a trailing piece
        shorter than one packet is never sent; a repeat starts the file over)."""
        size = self.packet_bytes
        if not size:
            return None
        if self._offset + size > len(self.prompt):
            if self._repeats_left == 0 or len(self.prompt) < size:
                return None
            if self._repeats_left is not None:
                self._repeats_left -= 1
            self._offset = 0
        payload = self.prompt[self._offset : self._offset + size]
        self._offset += size
        first = _MARKER if self._marker else 0
        header = _HEADER.pack(
            0x80, first | self.payload_type, self._seq, self._timestamp, self.ssrc
        )
        self._marker = False
        self._seq = (self._seq + 1) & 0xFFFF
        self._timestamp = (self._timestamp + RTP_CLOCK_PER_MS * self.packet_ms) & 0xFFFFFFFF
        self._sent_ms += self.packet_ms
        assert self._started_at is not None  # only a started player is asked for packets
        self.due = self._started_at + self._sent_ms / 1000.0
        return header + payload


@dataclass(frozen=True, slots=True)
class Played:
    """What one run of :meth:`Players.run_due` produced."""

    packets: list[tuple[Player, bytes]]  # in send order
    finished: list[Player]  # reached the end of their prompt


class Players:
    """Every running player, filed under its next due time in one heap.

    Entries are never removed from the middle: a stopped or re-filed player leaves a
    stale entry behind, recognised (and dropped) when it reaches the top.
    """

    __slots__ = ("_active", "_heap", "_order")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Player]] = []
        self._order = itertools.count()  # ties go first come, first served
        self._active: set[Player] = set()

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> Iterator[Player]:
        return iter(self._active)

    def add(self, player: Player, now: float | None) -> None:
        """Take ``player`` on; it starts at ``now``, or waits when ``now`` is None."""
        self._active.add(player)
        if now is not None:
            self.start(player, now)

    def start(self, player: Player, now: float) -> None:
        """A waiting player's listener became known: begin at ``now``."""
        if player in self._active and not player.started:
            player.start(now)
            self._file(player)

    def remove(self, player: Player) -> None:
        """Forget ``player`` (stopped, or its session ended)."""
        self._active.discard(player)
        player.filed_at = None

    def next_deadline(self) -> float | None:
        """When the earliest player has a packet due (None: nothing to send)."""
        heap = self._heap
        while heap and not self._current(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> Played:
        """Every packet due by ``now``, and the players that finished."""
        heap = self._heap
        pop = heapq.heappop
        packets: list[tuple[Player, bytes]] = []
        finished: list[Player] = []
        while heap and heap[0][0] <= now:
            entry = pop(heap)
            if not self._current(entry):
                continue  # stale: stopped, or filed again since
            player = entry[2]
            player.catch_up(now)
            while True:
                packet = player.next_packet()
                if packet is None:
                    finished.append(player)
                    self.remove(player)
                    break
                packets.append((player, packet))
                next_due = player.due
                if next_due is None or next_due > now:
                    self._file(player)
                    break
        return Played(packets, finished)

    def _file(self, player: Player) -> None:
        due = player.due
        player.filed_at = due
        if due is not None:
            heapq.heappush(self._heap, (due, next(self._order), player))

    @staticmethod
    def _current(entry: tuple[float, int, Player]) -> bool:
        due, _order, player = entry
        return player.filed_at == due  # remove() clears filed_at
