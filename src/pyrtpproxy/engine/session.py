"""Sessions, legs and streams, with the symmetric-RTP latching rules (relay-behaviour.md §3).

Pure: no sockets, no clock. The media layer feeds packets to :meth:`Stream.receive` on
its slow path and uses ``fast_src``/``fast_dest`` as a shortcut once a stream is settled.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Protocol

from .addresses import Endpoint, LocalAddress, NotifyTarget
from .rtp import RtpAnalysis, rtp_header

RELATCH_WINDOW = 10.0  # seconds after U/L during which any RTP source may re-latch
RELATCH_MAX_SEQ_DISTANCE = 536


class StreamTransport(Protocol):
    """The media layer's socket(s) of a stream, told when the remote address changes."""

    def send(self, data: bytes) -> object:
        """Send ``data`` to the stream's remote address (from the stream's own port)."""

    def remote_changed(self, remote: Endpoint | None) -> None:
        """Point any per-peer machinery (a connected socket, say) at ``remote``."""


class _Detached:
    """The transport of a stream without sockets: sends nothing, follows nothing."""

    def send(self, data: bytes) -> None:
        return None

    def remote_changed(self, remote: Endpoint | None) -> None:
        return None


DETACHED: StreamTransport = _Detached()


class Side(IntEnum):
    """Leg index: A gets the creating U's port, B the first L's (protocol.md §4)."""

    A = 0
    B = 1


class Stream:
    """The receive side of one leg for one protocol (RTP or RTCP), with its latching state.

    A packet arriving here came from this leg's party; it leaves from ``peer`` (the same
    protocol on the opposite leg) towards ``peer.remote``.
    """

    __slots__ = (
        "accepted",
        "analysis",
        "dropped",
        "fast_bytes",
        "fast_count",
        "fast_dest",
        "fast_src",
        "from_media",
        "ignored",
        "incomplete",
        "is_rtcp",
        "last_seq",
        "last_ssrc",
        "latched",
        "leg",
        "peer",
        "relatch_count",
        "relayed",
        "relayed_bytes",
        "remote",
        "sampled_at",
        "signalled_at",
        "transport",
    )

    def __init__(self, leg: Leg, is_rtcp: bool) -> None:
        self.leg = leg
        self.is_rtcp = is_rtcp
        self.peer: Stream = self  # wired by Session
        self.remote: Endpoint | None = None
        self.latched = False
        self.from_media = False
        self.last_ssrc: int | None = None
        self.last_seq = 0
        self.signalled_at = float("-inf")
        self.sampled_at = float("-inf")
        self.relatch_count = 0
        # counters; packets relayed by the media fast path are only in fast_count
        self.fast_count = 0
        self.fast_bytes = 0
        self.relayed_bytes = 0
        self.accepted = 0
        self.relayed = 0
        self.dropped = 0
        self.ignored = 0
        self.incomplete = 0
        self.analysis: RtpAnalysis | None = None if is_rtcp else RtpAnalysis()
        self.fast_src: object = None
        self.fast_dest: object = None
        self.transport: StreamTransport = DETACHED  # the media layer's socket(s), once opened

    # --- counters as the protocol reports them ------------------------------------------

    @property
    def packets_in(self) -> int:
        """Packets that passed the source checks (relayed or not)."""
        return self.fast_count + self.accepted

    @property
    def packets_relayed(self) -> int:
        """Packets sent on towards the other party."""
        return self.fast_count + self.relayed

    @property
    def bytes_relayed(self) -> int:
        """UDP payload bytes sent on towards the other party."""
        return self.fast_bytes + self.relayed_bytes

    # --- media -----------------------------------------------------------------------------

    def receive(
        self, packet: bytes, src: tuple[str, int] | tuple[str, int, int, int], now: float
    ) -> Endpoint | None:
        """Slow path for one packet from ``src``: apply latching, count it, and return
        where to send it (out of ``peer``'s socket), or None to drop it."""
        session = self.leg.session
        if not session.complete:
            self.incomplete += 1
            return None
        endpoint = Endpoint(src[0], src[1])
        if not self._source_ok(packet, endpoint, now):
            self.ignored += 1
            return None
        self.accepted += 1
        if self.analysis is not None:
            self.analysis.feed(packet, now)
        dest = self.peer.remote
        if dest is None:
            self.dropped += 1
            return None
        self.relayed += 1
        self.relayed_bytes += len(packet)
        if (
            self.latched
            and (self.remote == endpoint or self.leg.asymmetric)
            and session.fast_path_allowed
        ):
            self.fast_src = src
            self.fast_dest = dest
        return dest

    def _source_ok(self, packet: bytes, src: Endpoint, now: float) -> bool:
        remote = self.remote
        if remote is None:
            self._learn(src, packet, now)
            return True
        if self.leg.asymmetric:
            return src.host == remote.host
        if src == remote:
            if not self.latched:
                self._latch(packet, now)
            elif now - self.sampled_at >= 1.0:
                self._remember_rtp(packet, now)
            return True
        if not self.latched:
            self._learn(src, packet, now)
            return True
        if self.is_rtcp:
            return False
        header = rtp_header(packet)
        if header is None:
            return False
        _pt, seq, _ts, ssrc = header
        within_window = now - self.signalled_at <= RELATCH_WINDOW
        same_stream = (
            ssrc == self.last_ssrc
            and min((seq - self.last_seq) % 65536, (self.last_seq - seq) % 65536)
            <= RELATCH_MAX_SEQ_DISTANCE
        )
        if not (within_window or same_stream):
            return False
        self.relatch_count += 1
        self._learn(src, packet, now)
        return True

    def _learn(self, src: Endpoint, packet: bytes, now: float) -> None:
        """Take ``src`` as this stream's remote address, learned from media."""
        self.set_remote(src)
        self.from_media = True
        self._latch(packet, now)
        if not self.is_rtcp:
            rtcp = self.leg.rtcp
            if rtcp.remote is None or rtcp.remote.host != src.host:
                rtcp.set_remote(Endpoint(src.host, (src.port + 1) % 65536))
                rtcp.from_media = True

    def _latch(self, packet: bytes, now: float) -> None:
        if self.is_rtcp:
            self.latched = True
            return
        header = rtp_header(packet)
        if header is not None and header[3] == 0:
            return  # an SSRC of 0 is not a stream to latch to
        self.latched = True
        self._remember_rtp(packet, now)

    def _remember_rtp(self, packet: bytes, now: float) -> None:
        self.sampled_at = now
        header = rtp_header(packet)
        if header is not None:
            self.last_seq, self.last_ssrc = header[1], header[3]

    # --- signalling ------------------------------------------------------------------------

    def set_remote(self, remote: Endpoint | None) -> None:
        """Change the remote address and drop the fast-path shortcuts that depended on it."""
        self.remote = remote
        self.fast_src = None
        self.peer.fast_src = None
        self.transport.remote_changed(remote)

    def signal(self, remote: Endpoint, now: float, asymmetric: bool) -> None:
        """A U/L gave ``remote`` as this stream's party address (relay-behaviour.md §3 rule 4)."""
        if remote == self.remote:
            return
        if self.from_media and not asymmetric:
            # media knows better; a later SDP address only opens the re-latch window
            self.signalled_at = now
            return
        self.set_remote(remote)
        self.from_media = False
        self.latched = asymmetric


class Leg:
    """One side of a session: an RTP and an RTCP stream on ports P and P+1."""

    __slots__ = (
        "_activity_mark",
        "asymmetric",
        "codecs",
        "local",
        "on_hold",
        "port",
        "rtcp",
        "rtp",
        "session",
        "side",
        "ttl",
        "weak",
    )

    def __init__(self, session: Session, side: Side) -> None:
        self.session = session
        self.side = side
        self.port = 0  # 0: no port allocated yet
        self.local: LocalAddress | None = None
        self.asymmetric = False
        self.weak = False
        self.on_hold = False
        self.codecs: bytes | None = None
        self.ttl = 0
        self._activity_mark = 0
        self.rtp = Stream(self, is_rtcp=False)
        self.rtcp = Stream(self, is_rtcp=True)

    @property
    def activity(self) -> int:
        """A number that grows whenever a packet from this leg's party is accepted."""
        return self.rtp.packets_in + self.rtcp.packets_in

    def had_activity(self) -> bool:
        """True if packets were accepted since the last call (used by the sweeper)."""
        now = self.activity
        changed = now != self._activity_mark
        self._activity_mark = now
        return changed

    @property
    def streams(self) -> tuple[Stream, Stream]:
        """RTP and RTCP."""
        return self.rtp, self.rtcp

    def signal(self, remote: Endpoint, now: float) -> None:
        """Store the SDP address for RTP and the RTP port + 1 for RTCP."""
        self.rtp.signal(remote, now, self.asymmetric)
        self.rtcp.signal(Endpoint(remote.host, (remote.port + 1) % 65536), now, self.asymmetric)


class Session:
    """A relayed media stream pair, keyed by call-id and the tag that created it."""

    __slots__ = (
        "call_id",
        "complete",
        "created_at",
        "legs",
        "media_taps",
        "notify_source",
        "notify_tag",
        "notify_target",
        "strong",
        "tag",
    )

    def __init__(self, call_id: bytes, tag: bytes, now: float) -> None:
        self.call_id = call_id
        self.tag = tag
        self.created_at = now
        self.complete = False
        self.strong = False
        self.notify_target: NotifyTarget | None = None
        self.notify_tag: bytes | None = None
        self.notify_source: str | None = None
        self.media_taps = 0  # recorders/copies/players that must see every packet
        self.legs = (Leg(self, Side.A), Leg(self, Side.B))
        a, b = self.legs
        a.rtp.peer, b.rtp.peer = b.rtp, a.rtp
        a.rtcp.peer, b.rtcp.peer = b.rtcp, a.rtcp

    @property
    def fast_path_allowed(self) -> bool:
        """The media layer may skip the slow path only when nothing taps the media."""
        return self.media_taps == 0

    @property
    def ttl(self) -> int:
        """Seconds before the idle timeout: the minimum over the legs."""
        return min(leg.ttl for leg in self.legs)

    def reset_ttl(self, seconds: int) -> None:
        """Give both legs a full timer."""
        for leg in self.legs:
            leg.ttl = seconds

    @property
    def persistent(self) -> bool:
        """A session survives D while strong or while either leg is weak."""
        return self.strong or any(leg.weak for leg in self.legs)

    def streams(self) -> tuple[Stream, ...]:
        """All four streams."""
        return tuple(s for leg in self.legs for s in leg.streams)

    def invalidate_fast_path(self) -> None:
        """Make the next packet of every stream go through :meth:`Stream.receive`."""
        for stream in self.streams():
            stream.fast_src = None
