"""Parsed control commands: one small immutable dataclass per command."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from .values import slot_init

CallId = bytes
Tag = bytes


class Interface(IntEnum):
    """Bridge-mode side selected by the ``i``/``e`` modifiers (the index of its address
    among a family's, ``-l internal/external``)."""

    INTERNAL = 0
    EXTERNAL = 1


@slot_init
@dataclass(frozen=True, slots=True)
class AddressSpec:
    """An ``l``/``r`` modifier argument: a literal address or a ``{label}``."""

    text: str
    is_label: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class UpdateModifiers:
    """Modifiers of U and L (protocol.md §5.5)."""

    asymmetric: bool | None = None  # None: the relay's default
    weak: bool = False
    ipv6: bool = False
    interfaces: tuple[Interface, ...] = ()
    repacketize_ms: int | None = None
    codecs: bytes | None = None
    local_address: AddressSpec | None = None
    remote_address: AddressSpec | None = None
    new_port: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class Update:
    """``U`` (create or update) and ``L`` (lookup/answer): one command, two behaviours."""

    lookup_only: bool
    call_id: CallId
    addr: bytes
    port: bytes
    from_tag: Tag
    to_tag: Tag | None = None
    notify_socket: bytes | None = None
    notify_tag: bytes | None = None  # already URL-decoded
    modifiers: UpdateModifiers = field(default_factory=UpdateModifiers)
    subcommands: tuple[SubCommand, ...] = ()


@slot_init
@dataclass(frozen=True, slots=True)
class Delete:
    """``D[w] call-id from_tag [to_tag]``."""

    call_id: CallId
    from_tag: Tag
    to_tag: Tag | None = None
    weak: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class Record:
    """``R[s]``: start recording the matching legs."""

    call_id: CallId
    from_tag: Tag
    to_tag: Tag | None = None
    single_file: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class StopRecord:
    """``N[a]``: stop recording (``a``: both legs)."""

    call_id: CallId
    from_tag: Tag
    to_tag: Tag | None = None
    both: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class Copy:
    """``C[s][p] call-id target from_tag [to_tag]``: fork a leg's media."""

    call_id: CallId
    target: bytes
    from_tag: Tag
    to_tag: Tag | None = None
    single_file: bool = False
    reply_port: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class Play:
    """``P[count] call-id prompt codecs from_tag [to_tag]``: ``count`` plays, 0 only
    stops, negative loops until stopped."""

    call_id: CallId
    prompt: bytes
    codecs: bytes
    from_tag: Tag
    to_tag: Tag | None = None
    count: int = 1


@slot_init
@dataclass(frozen=True, slots=True)
class StopPlay:
    """``S call-id from_tag [to_tag]``."""

    call_id: CallId
    from_tag: Tag
    to_tag: Tag | None = None


@slot_init
@dataclass(frozen=True, slots=True)
class Query:
    """``Q[v] call-id from_tag [to_tag [counter ...]]``.

    A bad modifier is kept, not raised, because rtpproxy looks the session up first
    (``E50``) and only then rejects the modifier (``E19``).
    """

    call_id: CallId
    from_tag: Tag
    to_tag: Tag | None = None
    counters: tuple[bytes, ...] = ()
    verbose: bool = False
    bad_modifier: bool = False
    subcommands: tuple[SubCommand, ...] = ()


@slot_init
@dataclass(frozen=True, slots=True)
class Version:
    """``V``."""


@slot_init
@dataclass(frozen=True, slots=True)
class VersionFeature:
    """``VF <date>``."""

    date: bytes


@slot_init
@dataclass(frozen=True, slots=True)
class Info:
    """``I[b][l]``."""

    brief: bool = False
    load: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class DeleteAll:
    """``X``."""


@slot_init
@dataclass(frozen=True, slots=True)
class GetCounters:
    """``G[v] [name ...]``."""

    names: tuple[bytes, ...] = ()
    verbose: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class Introspect:
    """``Zsessions [offset [limit]]``: a page of the live sessions (our extension;
    rtpproxy answers ``E0`` to every ``Z`` command, so no client sends it)."""

    offset: int = 0
    limit: int = 100


@slot_init
@dataclass(frozen=True, slots=True)
class SubDelete:
    """``&& D[w]``: delete the session the main command used."""

    weak: bool = False


@slot_init
@dataclass(frozen=True, slots=True)
class SubLookup:
    """``&& L[mods] addr port``: set up the other leg of the session a ``U`` just used."""

    addr: bytes
    port: bytes
    modifiers: UpdateModifiers = field(default_factory=UpdateModifiers)


@slot_init
@dataclass(frozen=True, slots=True)
class SubSet:
    """``&& S ttl=N`` / ``&& S tos=N`` (``Sr``: the other leg): change a leg's idle
    timeout (and restart it) or its sockets' IPv4 TOS (VF 20251015)."""

    other_leg: bool
    ttl: int | None = None
    tos: int | None = None


SubCommand = SubDelete | SubLookup | SubSet

Command = (
    Update
    | Delete
    | Record
    | StopRecord
    | Copy
    | Play
    | StopPlay
    | Query
    | Version
    | VersionFeature
    | Info
    | DeleteAll
    | GetCounters
    | Introspect
)

READS_COUNTERS = (Query, GetCounters, Info, Introspect)  # answers include live packet counts
