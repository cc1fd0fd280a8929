"""Reply values and the one place their bytes are made (protocol.md §3, error-codes.md).

The engine answers with the values below; :func:`encode` turns one into the reply body
and :func:`frame` adds what the transport needs (the UDP cookie, the newline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode
from .values import slot_init

MAX_REPLY = 1024  # rtpproxy's reply buffer
REPLY_HEADROOM = 64  # Q and G fail (E26/E25) before their reply fills the buffer
SUBCOMMAND_FAILED = 1  # "-1": it did nothing (an earlier ``&& D`` removed the session...)


def format_value(value: int | float) -> bytes:
    """Integers as plain decimals, floats with six decimals (rtpproxy's ``%f``)."""
    if isinstance(value, float):
        return b"%f" % value
    return b"%d" % value


@slot_init
@dataclass(frozen=True, slots=True)
class Done:
    """``0``: the command did what it was asked (D, X, S, an empty L/U lookup...)."""

    succeeded: bool = True


OK = Done()
NOT_FOUND = Done(succeeded=False)  # L (or U lookup) for an unknown session: ``0``, an error


@slot_init
@dataclass(frozen=True, slots=True)
class Failure:
    """``E<n>``."""

    code: ErrorCode

    @property
    def succeeded(self) -> bool:
        """Always False."""
        return False


@slot_init
@dataclass(frozen=True, slots=True)
class PortReply:
    """The port of a leg, with the address to use when it is not the wildcard."""

    port: int
    address: str | None = None
    ipv6: bool = False
    succeeded: bool = True


@slot_init
@dataclass(frozen=True, slots=True)
class Flag:
    """``1`` or ``0`` (VF)."""

    value: bool
    succeeded: bool = True


@slot_init
@dataclass(frozen=True, slots=True)
class Version:
    """The protocol version (V)."""

    text: bytes
    succeeded: bool = True


@slot_init
@dataclass(frozen=True, slots=True)
class Values:
    """Counter values (Q, G): ``v1 v2`` or, verbose, ``name1=v1 name2=v2``."""

    items: tuple[tuple[bytes, int | float], ...]
    verbose: bool = False
    succeeded: bool = True


@slot_init
@dataclass(frozen=True, slots=True)
class InfoReply:
    """The ``I`` report."""

    sessions_created: int
    active_sessions: int
    packets_received: int
    packets_transmitted: int
    with_load: bool = False
    succeeded: bool = True


@slot_init
@dataclass(frozen=True, slots=True)
class Raw:
    """A body made elsewhere in protocol/ (the ``Zsessions`` JSON)."""

    body: bytes
    succeeded: bool = True


@slot_init
@dataclass(frozen=True, slots=True)
class SubFailure:
    """A failed ``&&`` sub-command: ``-<n>``."""

    code: int


Body = Done | Failure | PortReply | Flag | Version | Values | InfoReply | Raw
SubResult = Done | PortReply | SubFailure


@slot_init
@dataclass(frozen=True, slots=True)
class Reply:
    """A command's answer: its own body and, for U/L/Q, the sub-commands' results."""

    body: Body
    subresults: tuple[SubResult, ...] = ()

    @property
    def succeeded(self) -> bool:
        """What the ``ncmds_succd``/``ncmds_errs`` counters see."""
        return self.body.succeeded


def _port(reply: PortReply) -> bytes:
    if reply.address is None:
        return b"%d" % reply.port
    if reply.ipv6:
        return b"%d %s 6" % (reply.port, reply.address.encode())
    return b"%d %s" % (reply.port, reply.address.encode())


def encode_values(values: Values) -> bytes:
    """The body of a Q or G reply."""
    if values.verbose:
        return b" ".join(name + b"=" + format_value(value) for name, value in values.items)
    return b" ".join(format_value(value) for _name, value in values.items)


def fits(values: Values) -> bool:
    """Whether a Q/G reply fits rtpproxy's reply buffer."""
    return len(encode_values(values)) < MAX_REPLY - REPLY_HEADROOM


def _info(info: InfoReply) -> bytes:
    lines = [
        b"sessions created: %d" % info.sessions_created,
        b"active sessions: %d" % info.active_sessions,
        b"active streams: %d" % (2 * info.active_sessions),
        b"packets received: %d" % info.packets_received,
        b"packets transmitted: %d" % info.packets_transmitted,
    ]
    if info.with_load:
        lines.append(b"average load: 0.000000")
    return b"\n".join(lines)


def _body(body: Body) -> bytes:
    # by type: a U/L reply (PortReply) is the common case and should not wait in a match
    return _ENCODERS[type(body)](body)


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    PortReply: _port,
    Done: lambda body: b"0",
    Failure: lambda body: body.code.wire,
    Flag: lambda body: b"1" if body.value else b"0",
    Version: lambda body: body.text,
    Values: encode_values,
    InfoReply: _info,
    Raw: lambda body: body.body,
}


def _subresult(result: SubResult) -> bytes:
    match result:
        case Done():
            return b"0"
        case PortReply():
            return _port(result)
        case SubFailure(code=code):
            return b"-%d" % code


def encode(reply: Reply) -> bytes:
    """The reply body, without cookie or newline.

    Like rtpproxy, sub-commands that only succeeded add nothing; otherwise every result
    follows the main one after `` && ``.
    """
    main = _body(reply.body)
    subs = reply.subresults
    if not subs or all(isinstance(r, Done) for r in subs):
        return main
    return main + b"".join(b" && " + _subresult(r) for r in subs)


def frame(body: bytes, cookie: bytes | None = None) -> bytes:
    """A reply line as the transport sends it: ``[cookie ]body\\n``."""
    if cookie is None:
        return body + b"\n"
    return cookie + b" " + body + b"\n"


def error_line(code: ErrorCode, cookie: bytes | None = None) -> bytes:
    """The reply line of a failed command."""
    return frame(code.wire, cookie)
