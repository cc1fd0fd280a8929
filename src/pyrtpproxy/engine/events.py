"""What the engine tells the shell: frozen event values, never callbacks.

The engine appends events to its :class:`Outbox` while it executes a command, expires a
timer or judges a packet on the slow path; the caller takes them with
:meth:`Outbox.take` and acts on them (the media layer opens, aims and closes sockets,
the app logs, notifies and counts). Every rule about *what happened* lives in the
engine; every side effect lives in the shell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from ..protocol.values import slot_init
from .latching import LatchCause

if TYPE_CHECKING:
    from .addresses import Endpoint, LocalAddress, NotifyTarget
    from .playback import PlayEnd, Player
    from .session import Leg, Session, Stream
    from .taps import Tap


class EndReason(Enum):
    """Why a session left the table."""

    DELETED = "deleted"  # D, X, a ``&& D`` sub-command, or shutdown
    TIMEOUT = "timeout"  # the idle or setup timer ran out
    FAILED = "failed"  # the creating U failed after ports were bound; never counted as created


@slot_init
@dataclass(frozen=True, slots=True)
class SessionCreated:
    """A U created a session (it is in the table now)."""

    session: Session


@slot_init
@dataclass(frozen=True, slots=True)
class SessionCompleted:
    """Both legs of the session have a port: media is relayed from now on."""

    session: Session


@slot_init
@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session is gone; its legs' ports were released."""

    session: Session
    reason: EndReason


@slot_init
@dataclass(frozen=True, slots=True)
class LegOpened:
    """The port probe bound ``port`` and ``port + 1`` on ``local`` for ``leg``; the media
    layer now serves those sockets for the leg's streams."""

    leg: Leg
    local: LocalAddress
    port: int


@slot_init
@dataclass(frozen=True, slots=True)
class LegClosed:
    """``leg`` gave up ``port`` (session ended, ``n`` modifier, or a failed creation)."""

    leg: Leg
    local: LocalAddress
    port: int


@slot_init
@dataclass(frozen=True, slots=True)
class PortsReleased:
    """The probe bound ``port`` and ``port + 1`` on ``local`` but nothing will use them
    (a ``Cp`` whose leg already has a tap): close them."""

    local: LocalAddress
    port: int


@slot_init
@dataclass(frozen=True, slots=True)
class TapStarted:
    """``leg`` records or copies what it receives from now on (the host probe has opened
    the tap's files or sockets): its streams leave the fast path and the kernel."""

    leg: Leg
    tap: Tap


@slot_init
@dataclass(frozen=True, slots=True)
class TapStopped:
    """``leg``'s tap ended (N, D, X, timeout, shutdown): close it; a recording's files
    move from the spool to the record directory once no leg uses them. The next packet
    may settle the leg's streams again."""

    leg: Leg
    tap: Tap


@slot_init
@dataclass(frozen=True, slots=True)
class ResizerChanged:
    """A U/L set (``target_ms``) or removed (None) the re-packetization of the RTP that
    ``leg`` receives. While it is set, every such packet must reach the engine: the
    leg's shortcuts and kernel offload are stale."""

    leg: Leg
    target_ms: int | None


@slot_init
@dataclass(frozen=True, slots=True)
class TosChanged:
    """``&& S tos=N``: the leg's sockets send with IPv4 TOS ``tos`` from now on."""

    leg: Leg
    tos: int


@slot_init
@dataclass(frozen=True, slots=True)
class PlayerCreated:
    """``P`` gave ``player.leg`` a prompt: the other party's RTP towards it is muted
    from now on (off the fast path and the kernel). The player sends now, or once its
    listener's first packet arrives (``player.started``)."""

    player: Player
    prompt: bytes


@slot_init
@dataclass(frozen=True, slots=True)
class PlayerStarted:
    """A waiting player's listener sent its first packet: its packets are due now."""

    player: Player


@slot_init
@dataclass(frozen=True, slots=True)
class PlayerEnded:
    """A player stopped; the other party's RTP reaches its leg again."""

    player: Player
    reason: PlayEnd


@slot_init
@dataclass(frozen=True, slots=True)
class StreamChanged:
    """``stream``'s party address or its latching rules changed (signalling, latching,
    the ``a`` modifier): sockets aimed at the old address, shortcuts that skipped its
    slow path and its kernel offload are stale."""

    stream: Stream


@slot_init
@dataclass(frozen=True, slots=True)
class Latched:
    """``stream`` latched to its party's source address (``relatched``: moved to a new
    one after it had latched), for the reason ``cause``."""

    stream: Stream
    relatched: bool = False
    cause: LatchCause = LatchCause.FIRST_SOURCE


@slot_init
@dataclass(frozen=True, slots=True)
class LearningStarted:
    """``--latching safe``: ``source`` is not on a host the signalling named, so the
    stream holds it and its like back for the learning window, waiting for the
    signalled host (one event per window)."""

    stream: Stream
    source: Endpoint


@slot_init
@dataclass(frozen=True, slots=True)
class SourceRefused:
    """The latched ``stream`` refused a packet from ``source`` (the first refusal of the
    stream; later ones are only counted). ``foreign``: from a host that is neither the
    latched nor the signalled one."""

    stream: Stream
    source: Endpoint
    foreign: bool


@slot_init
@dataclass(frozen=True, slots=True)
class NotifyWanted:
    """A session with a notification request timed out: send ``tag + b"\\n"``."""

    target: NotifyTarget
    tag: bytes
    source_host: str
    call_id: bytes


@slot_init
@dataclass(frozen=True, slots=True)
class NotifyTargetUnknown:
    """A U named a notification socket that no ``-n`` target matches (U still succeeds)."""

    session: Session
    name: bytes


@slot_init
@dataclass(frozen=True, slots=True)
class OverloadChanged:
    """``--overload_prot``: the relay became overloaded (new sessions get E98) or
    recovered; ``load`` is the event loop's busy share that decided it."""

    overloaded: bool
    load: float


Event = (
    SessionCreated
    | SessionCompleted
    | SessionEnded
    | LegOpened
    | LegClosed
    | PortsReleased
    | TapStarted
    | TapStopped
    | ResizerChanged
    | TosChanged
    | PlayerCreated
    | PlayerStarted
    | PlayerEnded
    | StreamChanged
    | Latched
    | LearningStarted
    | SourceRefused
    | NotifyWanted
    | NotifyTargetUnknown
    | OverloadChanged
)

NO_EVENTS: tuple[Event, ...] = ()


class Outbox:
    """The engine's queue of events; ``on_emit`` sees each one as it is emitted (the
    counters use it, so every event is counted in one place)."""

    __slots__ = ("_events", "_on_emit")

    def __init__(self, on_emit: Callable[[Event], None]) -> None:
        self._events: list[Event] = []
        self._on_emit = on_emit

    def emit(self, event: Event) -> None:
        """Queue ``event``."""
        self._events.append(event)
        self._on_emit(event)

    def take(self) -> tuple[Event, ...]:
        """Every event queued since the last call, oldest first."""
        if not self._events:
            return NO_EVENTS
        events = tuple(self._events)
        self._events.clear()
        return events
