"""Sessions, legs and streams, with the symmetric-RTP latching rules (relay-behaviour.md §3).

Pure: no sockets, no clock. Every latching rule lives here, for both policies of
``--latching`` (:mod:`pyrtpproxy.engine.latching`). The media layer feeds packets to
:meth:`Stream.receive` on its slow path; what changed comes back as events in the
session's outbox (:mod:`pyrtpproxy.engine.events`), and :meth:`Stream.settled` tells the
media layer when it may relay a source's packets without asking again.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from .addresses import Endpoint, LocalAddress, NotifyTarget
from .events import Latched, LearningStarted, Outbox, SourceRefused, StreamChanged
from .latching import SAFE, Candidates, LatchCause, Latching
from .rtp import RtpAnalysis, rtp_header
from .taps import Tap

if TYPE_CHECKING:
    from .playback import Player
    from .resizer import Resizer

RELATCH_WINDOW = 10.0  # seconds after U/L during which any RTP source may re-latch
RELATCH_MAX_SEQ_DISTANCE = 536
SAMPLE_INTERVAL = 1.0  # the latched SSRC/sequence are refreshed at most this often
NEVER = float("-inf")
UNFILED = float("inf")  # the deadline of a session not filed with the timers
# timers.py's heap entry: [deadline, order, session, or None once the entry is stale]
TimerEntry = list[Any]


class StreamTransport(Protocol):
    """The media layer's socket(s) of a stream; the opposite stream sends through it."""

    def send(self, data: bytes) -> object:
        """Send ``data`` to the stream's remote address (from the stream's own port)."""


class _Detached:
    """The transport of a stream without sockets: sends nothing."""

    def send(self, data: bytes) -> None:
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
        "_sample_mark",
        "accepted",
        "analysis",
        "candidates",
        "dropped",
        "fast_bytes",
        "fast_count",
        "foreign",
        "from_media",
        "held",
        "ignored",
        "incomplete",
        "is_rtcp",
        "last_seq",
        "last_ssrc",
        "latched",
        "leg",
        "muted",
        "peer",
        "readdressed_at",
        "refusal_reported",
        "relatch_count",
        "relayed",
        "relayed_bytes",
        "remote",
        "resizer",
        "sampled_at",
        "seen_at",
        "signalled",
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
        self.signalled_at = NEVER
        self.sampled_at = NEVER
        self._sample_mark = -1  # analysis.received when last_seq was sampled
        self.seen_at = NEVER  # arrival of the last accepted packet (the idle timer's input)
        self.relatch_count = 0
        # latching policy state: the last address a U/L gave (even one media overrode),
        # when a U/L last named a new host, the sources of a learning window
        self.signalled: Endpoint | None = None
        self.readdressed_at = NEVER
        self.candidates: Candidates | None = None
        self.refusal_reported = False
        # counters; packets relayed by the media fast path (or the kernel) are only in
        # fast_count/fast_bytes, which the media layer increments
        self.fast_count = 0
        self.fast_bytes = 0
        self.relayed_bytes = 0
        self.accepted = 0
        self.relayed = 0
        self.dropped = 0
        self.ignored = 0  # refused by the source checks; of which:
        self.held = 0  # candidates of a learning window
        self.foreign = 0  # from a host neither latched nor signalled
        self.incomplete = 0
        self.muted = 0  # RTP dropped because a prompt plays to the other party
        # made with the stream's first RTP packet: idle sessions stay small
        self.analysis: RtpAnalysis | None = None
        self.transport: StreamTransport = DETACHED  # the media layer's socket(s), once opened
        self.resizer: Resizer | None = None  # z<ms>: this party's RTP is re-packetized

    # --- counters as the protocol reports them ------------------------------------------

    @property
    def packets_in(self) -> int:
        """Packets that passed the source checks (relayed or not)."""
        return self.fast_count + self.accepted + self.muted

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
        where to send it (out of ``peer``'s socket), or None to drop it. Address changes
        and latches are emitted to the session's outbox."""
        if not self.admit(packet, src, now):
            return None
        return self.relay(1, len(packet))

    def admit(
        self, packet: bytes, src: tuple[str, int] | tuple[str, int, int, int], now: float
    ) -> bool:
        """Apply the latching rules to one packet from ``src`` and count it as received
        (accepted or not); True if it was accepted."""
        session = self.leg.session
        if not session.complete:
            self.incomplete += 1
            return False
        endpoint = Endpoint(src[0], src[1])
        if not self._source_ok(packet, endpoint, now):
            self.ignored += 1
            return False
        self.seen_at = now
        analysis = self.rtp_analysis()
        if analysis is not None:
            analysis.feed(packet, now)
        if not self.is_rtcp and self.peer.leg.player is not None:
            self.muted += 1  # the other party hears a prompt instead (§3.4)
            return False
        self.accepted += 1
        return True

    def relay(self, packets: int, size: int) -> Endpoint | None:
        """An accepted packet becomes ``packets`` packets of ``size`` bytes in all (one
        as it came, or what the re-packetizer made of it): count them relayed and return
        where they go, or count the packet dropped if the other party is unknown."""
        dest = self.peer.remote
        if dest is None:
            self.dropped += 1
            return None
        self.relayed += packets
        self.relayed_bytes += size
        return dest

    def settled(self, src: tuple[str, int] | tuple[str, int, int, int]) -> bool:
        """Whether every further packet from ``src`` would be accepted and relayed without
        changing any state, so the media layer may skip :meth:`receive` for them."""
        remote = self.remote
        return (
            self.latched
            and remote is not None
            and self.peer.remote is not None
            and (self.leg.asymmetric or (remote.host == src[0] and remote.port == src[1]))
            and self.leg.tap is None  # a tap must see every packet
            and (self.is_rtcp or self.peer.leg.player is None)  # a prompt mutes RTP
            and self.resizer is None  # so must a re-packetizer
        )

    def _source_ok(self, packet: bytes, src: Endpoint, now: float) -> bool:
        remote = self.remote
        if remote is None:
            return self._first_source(src, packet, now)
        if self.leg.asymmetric:
            if src.host == remote.host:
                return True
            self._refuse(src)
            return False
        if src == remote:
            if not self.latched:
                self._latch(packet, now)
                if self.latched:
                    self.leg.session.outbox.emit(Latched(self, cause=self._cause(src.host)))
            return True
        if not self.latched:
            return self._first_source(src, packet, now)
        cause = self._relatch_cause(packet, src, now)
        if cause is None:
            self._refuse(src)
            return False
        self.relatch_count += 1
        self._learn(src, packet, now, cause, relatched=True)
        return True

    def _first_source(self, src: Endpoint, packet: bytes, now: float) -> bool:
        """A packet from ``src`` that may give the unlatched stream its source: at once
        (rtpproxy; or a trusted host under ``safe``), or after a learning window."""
        latching = self.leg.session.latching
        trusted = self._trusted(src.host)
        if trusted is None and latching.safe:
            if self.is_rtcp and self.leg.rtp.latched:
                # a party's RTCP comes from its RTP's host; it is too rare to outvote a scan
                self._refuse(src)
                return False
            return self._candidate(src, packet, now, latching)
        self._learn(src, packet, now, trusted or LatchCause.FIRST_SOURCE)
        return True

    def _candidate(self, src: Endpoint, packet: bytes, now: float, latching: Latching) -> bool:
        """``safe``: ``src`` is on no trusted host. Its packets are counted and held back
        (not relayed) for the learning window, which starts with the first of them; a
        trusted host that speaks meanwhile latches at once. After the window the source
        that has sent the most packets since it began (and a few at least) wins with its
        next packet."""
        candidates = self.candidates
        if candidates is None:
            self.candidates = candidates = Candidates(now + latching.window)
            self.leg.session.outbox.emit(LearningStarted(self, src))
        candidates.count(src)
        if now < candidates.ends_at or not candidates.leads(src):
            self.held += 1
            return False
        self._learn(src, packet, now, LatchCause.LEARNED)
        return True

    def _trusted(self, host: str) -> LatchCause | None:
        """Why ``host`` is believed to be this stream's party without a learning window:
        the U/L named it, or (RTCP) the leg's RTP latched to it. None: no reason."""
        signalled = self.signalled
        if signalled is not None and signalled.host == host:
            return LatchCause.SIGNALLED
        if self.is_rtcp:
            rtp = self.leg.rtp
            if rtp.latched and rtp.remote is not None and rtp.remote.host == host:
                return LatchCause.MEDIA_HOST
        return None

    def _cause(self, host: str) -> LatchCause:
        """Why the stream latches to its remote address on ``host``."""
        trusted = self._trusted(host)
        if trusted is not None:
            return trusted
        return LatchCause.LEARNED if self.leg.session.latching.safe else LatchCause.FIRST_SOURCE

    def _relatch_cause(self, packet: bytes, src: Endpoint, now: float) -> LatchCause | None:
        """Whether the latched stream moves to ``src``, and why (§3.1 rule 3). ``safe``
        narrows it: a trusted host takes over from one that only won a window; another
        host moves it only within the window of a U/L that named a new host; the rest
        follows rtpproxy's rule, from the latched or the signalled host."""
        remote = self.remote
        assert remote is not None
        if self.leg.session.latching.safe:
            trusted = self._trusted(src.host)
            if trusted is not None and self._trusted(remote.host) is None:
                return trusted
            if (
                trusted is None
                and src.host != remote.host
                and now - self.readdressed_at > RELATCH_WINDOW
            ):
                return None
        if self.is_rtcp:
            return None
        header = rtp_header(packet)
        if header is None:
            return None
        _pt, seq, _ts, ssrc = header
        self._refresh_sample(now)
        if now - self.signalled_at <= RELATCH_WINDOW:
            return LatchCause.UPDATE
        if (
            ssrc == self.last_ssrc
            and min((seq - self.last_seq) % 65536, (self.last_seq - seq) % 65536)
            <= RELATCH_MAX_SEQ_DISTANCE
        ):
            return LatchCause.SAME_STREAM
        return None

    def _refuse(self, src: Endpoint) -> None:
        """Count a packet the source checks refused; report the stream's first refusal."""
        remote = self.remote
        foreign = (remote is None or remote.host != src.host) and self._trusted(src.host) is None
        self.foreign += foreign
        if not self.refusal_reported:
            self.refusal_reported = True
            self.leg.session.outbox.emit(SourceRefused(self, src, foreign))

    def _learn(
        self, src: Endpoint, packet: bytes, now: float, cause: LatchCause, relatched: bool = False
    ) -> None:
        """Take ``src`` as this stream's remote address, learned from media."""
        self.set_remote(src)
        self.from_media = True
        self._latch(packet, now)
        self.leg.session.outbox.emit(Latched(self, relatched, cause))
        if not self.is_rtcp:
            rtcp = self.leg.rtcp
            if rtcp.remote is None or rtcp.remote.host != src.host:
                rtcp.set_remote(Endpoint(src.host, (src.port + 1) % 65536))
                rtcp.from_media = True

    def _latch(self, packet: bytes, now: float) -> None:
        if self.is_rtcp:
            self.latched = True
            self.candidates = None
            return
        header = rtp_header(packet)
        if header is not None and header[3] == 0:
            return  # an SSRC of 0 is not a stream to latch to
        self.latched = True
        self.candidates = None
        self.sampled_at = now
        if header is not None:
            self.last_seq, self.last_ssrc = header[1], header[3]
            self._sample_mark = self.analysis.received if self.analysis is not None else -1

    def rtp_analysis(self) -> RtpAnalysis | None:
        """The analysis of this RTP stream's packets, made on first use (None for RTCP)."""
        analysis = self.analysis
        if analysis is None and not self.is_rtcp:
            analysis = self.analysis = RtpAnalysis()
        return analysis

    def _refresh_sample(self, now: float) -> None:
        """Bring the latched SSRC/sequence up to date from the packets accepted since the
        last sample, at most once per :data:`SAMPLE_INTERVAL` (rule 5)."""
        analysis = self.analysis
        if (
            analysis is not None
            and analysis.ssrc is not None
            and analysis.received != self._sample_mark
            and now - self.sampled_at >= SAMPLE_INTERVAL
        ):
            self.take_sample(now)

    def take_sample(self, now: float) -> None:
        """Record the newest accepted sequence number and SSRC as the latched ones."""
        analysis = self.analysis
        if analysis is None or analysis.ssrc is None:
            return
        self.last_seq, self.last_ssrc = analysis.max_seq, analysis.ssrc
        self.sampled_at = now
        self._sample_mark = analysis.received

    def note_forwarded(self, packets: int, size: int, seq: int | None, now: float) -> None:
        """Account ``packets`` (``size`` payload bytes) relayed without the slow path, at
        ``now``: by the kernel, or as the media fast path does inline. ``seq`` (kernel
        forwarding) estimates the newest sequence number, which re-latching compares
        against, because the relay no longer sees the packets."""
        self.fast_count += packets
        self.fast_bytes += size
        self.seen_at = now
        if seq is not None:
            self.last_seq = seq
            self.sampled_at = now
            if self.analysis is not None:
                self._sample_mark = self.analysis.received

    # --- signalling ------------------------------------------------------------------------

    def set_remote(self, remote: Endpoint | None) -> None:
        """Change the remote address; sockets and shortcuts aimed at the old one are stale.
        A leg without a port has no sockets yet: ``LegOpened`` will aim them."""
        self.remote = remote
        if self.leg.port:
            self.leg.session.outbox.emit(StreamChanged(self))

    def signal(self, remote: Endpoint, now: float, asymmetric: bool) -> None:
        """A U/L gave ``remote`` as this stream's party address (relay-behaviour.md §3 rule 4)."""
        self._note_signalled(remote, now)
        if remote == self.remote:
            return
        if self.from_media and not asymmetric:
            # media knows better; a later SDP address only opens the re-latch window
            self.signalled_at = now
            return
        self.set_remote(remote)
        self.from_media = False
        self.latched = asymmetric

    def _note_signalled(self, remote: Endpoint, now: float) -> None:
        """Remember the signalled host for ``--latching safe``, even where media's
        address prevails, and when a U/L last named a host other than the one known
        before (signalled, or latched to when nothing was signalled)."""
        known = self.signalled or (self.remote if self.latched else None)
        self.signalled = remote
        if known is not None and known.host != remote.host:
            self.readdressed_at = now


class Leg:
    """One side of a session: an RTP and an RTCP stream on ports P and P+1."""

    __slots__ = (
        "asymmetric",
        "codecs",
        "expires_at",
        "local",
        "on_hold",
        "player",
        "port",
        "ptime_ms",
        "rtcp",
        "rtp",
        "session",
        "side",
        "tap",
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
        self.expires_at = NEVER  # from the last U/L; media activity extends it (timers.py)
        self.tap: Tap | None = None  # the recording or copy of what this leg receives
        self.ttl: int | None = None  # && S ttl=N: this leg's timeout instead of -T/-W
        self.player: Player | None = None  # the prompt this leg's party hears (P)
        self.ptime_ms: int | None = None  # z of the other party's U/L: P … session's ptime
        self.rtp = Stream(self, is_rtcp=False)
        self.rtcp = Stream(self, is_rtcp=True)

    @property
    def active_at(self) -> float:
        """When this leg's party last sent a packet that was accepted."""
        return max(self.rtp.seen_at, self.rtcp.seen_at)

    @property
    def streams(self) -> tuple[Stream, Stream]:
        """RTP and RTCP."""
        return self.rtp, self.rtcp

    def reset_timer(self, now: float, seconds: int) -> None:
        """A full timer of ``seconds`` from ``now``, or of the leg's own ``&& S ttl=N``."""
        # rtpproxy's sweeper lets a session live T+1 s
        self.expires_at = now + ((seconds if self.ttl is None else self.ttl) + 1)

    def set_asymmetric(self, asymmetric: bool) -> None:
        """Switch the leg between symmetric and asymmetric latching rules."""
        if asymmetric != self.asymmetric:
            self.asymmetric = asymmetric
            if self.port:
                for stream in self.streams:
                    self.session.outbox.emit(StreamChanged(stream))

    def signal(self, remote: Endpoint, now: float) -> None:
        """Store the SDP address for RTP and the RTP port + 1 for RTCP."""
        self.rtp.signal(remote, now, self.asymmetric)
        self.rtcp.signal(Endpoint(remote.host, (remote.port + 1) % 65536), now, self.asymmetric)


class Session:
    """A relayed media stream pair, keyed by call-id and the tag that created it."""

    __slots__ = (
        "call_id",
        "complete",
        "created",
        "created_at",
        "ended",
        "latching",
        "legs",
        "notify_source",
        "notify_tag",
        "notify_target",
        "outbox",
        "strong",
        "tag",
        "timer_entry",
    )

    def __init__(
        self, call_id: bytes, tag: bytes, now: float, outbox: Outbox, latching: Latching = SAFE
    ) -> None:
        self.call_id = call_id
        self.tag = tag
        self.created_at = now
        self.outbox = outbox
        self.latching = latching  # --latching: whose packets a stream relays
        self.created = False  # in the table (a creating U that fails never gets there)
        self.ended = False
        self.complete = False
        self.strong = False
        self.timer_entry: TimerEntry | None = None  # where timers.py filed it
        self.notify_target: NotifyTarget | None = None
        self.notify_tag: bytes | None = None
        self.notify_source: str | None = None
        self.legs = (Leg(self, Side.A), Leg(self, Side.B))
        a, b = self.legs
        a.rtp.peer, b.rtp.peer = b.rtp, a.rtp
        a.rtcp.peer, b.rtcp.peer = b.rtcp, a.rtcp

    @property
    def timer_at(self) -> float:
        """The deadline this session is filed under (timers.py); UNFILED if none."""
        entry = self.timer_entry
        return UNFILED if entry is None else float(entry[0])

    def reset_timer(self, now: float, seconds: int) -> None:
        """Give both legs a full timer of ``seconds`` from ``now`` (a U or L touched it)."""
        for leg in self.legs:
            leg.reset_timer(now, seconds)

    @property
    def persistent(self) -> bool:
        """A session survives D while strong or while either leg is weak."""
        a, b = self.legs
        return self.strong or a.weak or b.weak

    def streams(self) -> tuple[Stream, ...]:
        """All four streams."""
        return tuple(s for leg in self.legs for s in leg.streams)
