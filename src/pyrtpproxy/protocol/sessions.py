"""The ``Zsessions`` session listing as typed values, and its JSON wire form (docs/ctl.md).

The relay builds :class:`SessionView` values from its sessions and encodes a page of them
with :func:`encode_reply`; ``pyrtpproxy ctl`` decodes the reply with :func:`decode_page`
and reads attributes. Every JSON key is written down once, here: it is the field's name,
except where :data:`_JSON_KEYS` says otherwise (``from`` is a Python keyword; ``v`` and
``next`` are terse on the wire). The field order is the key order on the wire.

The reply is one line of JSON, ASCII only (everything else escaped), with no spaces. A
page is capped at :data:`MAX_REPLY_BYTES` so it fits one UDP datagram, but always holds
at least one session so paging makes progress; ``next`` is the offset of the following
page, ``null`` on the last one.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from itertools import islice
from typing import Any, Final, Literal, TypeVar, get_args, get_origin, get_type_hints

COMMAND_WORD: Final = b"Zsessions"
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_REPLY_BYTES: Final = 32 * 1024
HEADER_ROOM: Final = 256  # bytes kept free for the page header around the sessions
FORMAT_VERSION: Final = 1

LegSide = Literal["A", "B"]


@dataclass(frozen=True, slots=True)
class LegView:
    """One leg: the relay port one party sends to, and what came from that party."""

    side: LegSide  # the leg's index (protocol.md §4)
    local: str | None  # advertised or bound address, "*" for a wildcard, None before a port
    port: int  # 0 before a port is allocated
    remote: str | None  # "host:port" ("[v6]:port") the party's RTP goes to, None if unknown
    latched: bool
    asymmetric: bool
    rtp_in: int
    rtp_relayed: int
    rtcp_in: int
    rtcp_remote: str | None
    dropped: int  # RTP + RTCP that could not be relayed (other party's address unknown)
    ignored: int  # RTP + RTCP from a wrong source
    ttl: int  # seconds left on this leg's idle timer


@dataclass(frozen=True, slots=True)
class SessionView:
    """One session; call-id and tag are the wire bytes decoded as Latin-1."""

    call_id: str
    tag: str
    complete: bool
    age: float  # seconds since creation, finite
    ttl: int
    idle: int  # full TTL minus ttl: seconds since the last packet, in timer steps
    notify: bool
    from_leg: LegView  # receives the media of the party whose tag created the session
    to_leg: LegView


@dataclass(frozen=True, slots=True)
class SessionsPage:
    """One reply to ``Zsessions OFFSET LIMIT``: the header and the sessions it carries."""

    version: int
    total: int
    offset: int
    next_offset: int | None  # offset of the following page; None on the last one
    ttl: int
    setup_ttl: int
    sessions: tuple[SessionView, ...]  # last: the encoder appends it after the header


class SessionsFormatError(ValueError):
    """A ``Zsessions`` reply that is not a listing page this module can read."""


# Python attribute -> JSON key, for the fields whose key is not their name.
_JSON_KEYS: Final = {"version": "v", "next_offset": "next", "from_leg": "from", "to_leg": "to"}

_SEPARATORS: Final = (",", ":")


def _wire_keys(cls: type) -> tuple[tuple[str, str], ...]:
    return tuple((f.name, _JSON_KEYS.get(f.name, f.name)) for f in fields(cls))


_LEG_KEYS: Final = _wire_keys(LegView)
_SESSION_KEYS: Final = _wire_keys(SessionView)
_HEADER_KEYS: Final = _wire_keys(SessionsPage)[:-1]
_SESSIONS_KEY: Final = _wire_keys(SessionsPage)[-1][1]
_VERSION_KEY: Final = _JSON_KEYS["version"]


# --- encoding ---------------------------------------------------------------------------


def leg_to_json(leg: LegView) -> dict[str, Any]:
    """``leg`` as the JSON object of the wire form."""
    return {key: getattr(leg, name) for name, key in _LEG_KEYS}


def session_to_json(session: SessionView) -> dict[str, Any]:
    """``session`` as the JSON object of the wire form (legs included)."""
    out: dict[str, Any] = {}
    for name, key in _SESSION_KEYS:
        value = getattr(session, name)
        out[key] = leg_to_json(value) if isinstance(value, LegView) else value
    return out


def _encode_session(session: SessionView) -> bytes:
    return json.dumps(session_to_json(session), separators=_SEPARATORS).encode("ascii")


def _assemble(page: SessionsPage, items: list[bytes]) -> bytes:
    """``page``'s header followed by the already encoded ``items`` as its sessions."""
    header = {key: getattr(page, name) for name, key in _HEADER_KEYS}
    head = json.dumps(header, separators=_SEPARATORS).encode("ascii")
    key = _SESSIONS_KEY.encode("ascii")
    return head[:-1] + b',"' + key + b'":[' + b",".join(items) + b"]}"


def encode_page(page: SessionsPage) -> bytes:
    """The reply body (no trailing newline) carrying exactly ``page``; no size cap."""
    return _assemble(page, [_encode_session(s) for s in page.sessions])


def encode_reply(
    sessions: Iterable[SessionView],
    *,
    total: int,
    offset: int,
    limit: int,
    ttl: int,
    setup_ttl: int,
) -> bytes:
    """The reply body (no trailing newline) for ``Zsessions offset limit``.

    ``sessions`` yields the views from ``offset`` on; it is read lazily, at most
    ``limit`` of them and one past the byte cap, so a caller can describe sessions on
    demand. ``total`` is the number of live sessions, which decides ``next``.
    """
    items: list[bytes] = []
    size = 0
    for view in islice(sessions, max(0, limit)):
        encoded = _encode_session(view)
        if items and size + len(encoded) > MAX_REPLY_BYTES - HEADER_ROOM:
            break
        items.append(encoded)
        size += len(encoded) + 1
    index = offset + len(items)
    page = SessionsPage(
        version=FORMAT_VERSION,
        total=total,
        offset=offset,
        next_offset=index if index < total else None,
        ttl=ttl,
        setup_ttl=setup_ttl,
        sessions=(),  # already encoded in items
    )
    return _assemble(page, items)


# --- decoding ---------------------------------------------------------------------------

_T = TypeVar("_T")
_Reader = Callable[[object, str], Any]


def _error(path: str, problem: str) -> SessionsFormatError:
    where = f"{path}: " if path else ""
    return SessionsFormatError(f"Zsessions reply: {where}{problem}")


def _fail(path: str, expected: str, value: object) -> SessionsFormatError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return _error(path, f"expected {expected}, got {shown}")


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _read_bool(value: object, path: str) -> bool:
    if type(value) is not bool:
        raise _fail(path, "true or false", value)
    return value


def _read_int(value: object, path: str) -> int:
    if type(value) is not int:  # bool is an int subclass, not a count
        raise _fail(path, "an integer", value)
    return value


def _read_float(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(path, "a finite number", value)
    return float(value)


def _read_str(value: object, path: str) -> str:
    if type(value) is not str:
        raise _fail(path, "a string", value)
    return value


def _read_object(cls: type[_T], value: object, path: str) -> _T:
    if not isinstance(value, dict):
        raise _fail(path, "a JSON object", value)
    values: dict[str, Any] = {}
    for name, key, read in _READERS[cls]:
        if key not in value:
            raise _error(path, f"missing {key!r}")
        values[name] = read(value[key], _child(path, key))
    return cls(**values)  # keys the reader does not know are later additions: ignored


def _reader(hint: object) -> _Reader:
    """How to read and check one field, from its type annotation."""
    simple: dict[object, _Reader] = {
        bool: _read_bool,
        int: _read_int,
        float: _read_float,
        str: _read_str,
    }
    if hint in simple:
        return simple[hint]
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        allowed = args

        def read_choice(value: object, path: str) -> object:
            if type(value) is not str or value not in allowed:
                raise _fail(path, " or ".join(map(repr, allowed)), value)
            return value

        return read_choice
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        inner = _reader(next(a for a in args if a is not type(None)))
        return lambda value, path: None if value is None else inner(value, path)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _reader(args[0])

        def read_list(value: object, path: str) -> tuple[object, ...]:
            if not isinstance(value, list):
                raise _fail(path, "a JSON array", value)
            return tuple(item(element, f"{path}[{i}]") for i, element in enumerate(value))

        return read_list
    if isinstance(hint, type) and is_dataclass(hint):
        cls = hint
        return lambda value, path: _read_object(cls, value, path)
    raise TypeError(f"no reader for {hint!r}")  # a field type this module does not support


def _readers(cls: type) -> tuple[tuple[str, str, _Reader], ...]:
    hints = get_type_hints(cls)
    return tuple((name, key, _reader(hints[name])) for name, key in _wire_keys(cls))


_READERS: Final[dict[type, tuple[tuple[str, str, _Reader], ...]]] = {
    cls: _readers(cls) for cls in (LegView, SessionView, SessionsPage)
}


def _reject_constant(name: str) -> float:
    raise SessionsFormatError(f"Zsessions reply: {name} is not a number")


def decode_page(body: str | bytes) -> SessionsPage:
    """Parse a ``Zsessions`` reply body (with or without its newline) into a page.

    Raises :class:`SessionsFormatError` naming the offending field when ``body`` is not
    JSON, a field is missing or has the wrong type, or the format version is not
    :data:`FORMAT_VERSION`. Keys it does not know are ignored (later additions).
    """
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except SessionsFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise SessionsFormatError(f"Zsessions reply is not JSON: {exc}") from None
    if isinstance(document, dict):
        version = document.get(_VERSION_KEY)
        if type(version) is int and version != FORMAT_VERSION:
            raise SessionsFormatError(
                f"Zsessions reply has format version {version}; this reads {FORMAT_VERSION}"
            )
    return _read_object(SessionsPage, document, "")
