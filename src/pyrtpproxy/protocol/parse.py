"""Parse control-protocol bytes into commands (pure; no I/O).

Check order follows rtpproxy (error-codes.md): tokenising (E5), command letter (E0),
argument count (E1), forbidden modifiers (E2), misplaced sub-commands (E3), then
command-specific modifiers and arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from . import sessions
from .commands import (
    AddressSpec,
    Command,
    Copy,
    Delete,
    DeleteAll,
    GetCounters,
    Info,
    Interface,
    Introspect,
    Play,
    Query,
    Record,
    StopPlay,
    StopRecord,
    SubCommand,
    SubDelete,
    SubLookup,
    SubSet,
    Update,
    UpdateModifiers,
    Version,
    VersionFeature,
)
from .errors import ErrorCode, ProtocolError

MAX_TOKENS = 24  # a segment of this many tokens or more is a syntax error
MAX_SUBCOMMANDS = 15
SUBCOMMAND_SEPARATOR = b"&&"
MAX_COUNTER_NAMES = 40  # G accepts at most one name per counter (E1 beyond)

_SEPARATORS = re.compile(rb"[ \t\r\n]+")
_TRAILING_JUNK = b"\0 \t\r\n"
# bytes' ``in`` with an int looks for one byte; with a bytes needle CPython first tries
# it as an int and clears the TypeError, which costs several times the search
_VT, _FF, _NUL = 0x0B, 0x0C, 0x00
MODIFIER_CACHE = 512  # distinct U/L modifier strings remembered (clients use a handful)


def tokenize(data: bytes) -> list[bytes]:
    """Split a command into tokens; trailing NUL padding (OpenSIPS 1.9) is ignored."""
    return _tokens(data.rstrip(_TRAILING_JUNK))


def _tokens(stripped: bytes) -> list[bytes]:
    # bytes.split() also splits at vertical tab and form feed, which stay inside tokens
    if _VT in stripped or _FF in stripped:
        return [t for t in _SEPARATORS.split(stripped) if t]
    return stripped.split()  # the same split, in C


def split_cookie(data: bytes) -> tuple[bytes | None, bytes]:
    """Split a UDP datagram into ``(cookie, command)``; ``(None, b"")`` when empty."""
    stripped = data.lstrip(b" \t\r\n")
    if _VT not in stripped and _FF not in stripped:  # the same split, in C
        parts = stripped.split(None, 1)
        if len(parts) == 2:
            return parts[0], parts[1]
    match = _SEPARATORS.search(stripped)
    if match is None:
        cookie = stripped.rstrip(_TRAILING_JUNK)
        return (cookie or None), b""
    return stripped[: match.start()], stripped[match.end() :]


def parse(data: bytes, *, bridge_mode: bool = False) -> Command:
    """Parse one command (without cookie). Raises :class:`ProtocolError`."""
    stripped = data.rstrip(_TRAILING_JUNK)
    tokens = _tokens(stripped)
    if tokens and tokens[0] == sessions.COMMAND_WORD:
        listing = _parse_introspect(tokens)
        if listing is not None:
            return listing
    if not tokens or _NUL in stripped:  # separators are never NUL: a token has it
        raise ProtocolError(ErrorCode.SYNTAX, "empty command or NUL byte")
    segments = _split_segments(tokens)
    main, subs = segments[0], segments[1:]
    word = main[0]
    letter = word[:1].upper()
    parser = _PARSERS.get(letter)
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {word[:1]!r}")
    return parser(word[1:], main, subs, bridge_mode)


def _parse_introspect(tokens: list[bytes]) -> Introspect | None:
    """``Zsessions [OFFSET [LIMIT]]`` exactly (docs/ctl.md); anything else starting
    with ``Z`` is not ours and gets rtpproxy's ``E0``."""
    numbers = tokens[1:]
    if len(numbers) > 2 or not all(n.isdigit() and len(n) <= 9 for n in numbers):
        return None
    offset = int(numbers[0]) if numbers else 0
    limit = int(numbers[1]) if len(numbers) > 1 else sessions.DEFAULT_LIMIT
    return Introspect(offset, max(1, min(limit, sessions.MAX_LIMIT)))


def _split_segments(tokens: list[bytes]) -> list[list[bytes]]:
    if SUBCOMMAND_SEPARATOR not in tokens:
        segments = [tokens]  # the common case: no sub-commands, nothing to split
    else:
        segments = [[]]
        for token in tokens:
            if token == SUBCOMMAND_SEPARATOR:
                segments.append([])
            else:
                segments[-1].append(token)
        if any(not s for s in segments) or len(segments) - 1 > MAX_SUBCOMMANDS:
            raise ProtocolError(ErrorCode.SYNTAX, "misplaced &&")
    if max(map(len, segments)) >= MAX_TOKENS:
        raise ProtocolError(ErrorCode.SYNTAX, "too many tokens")
    return segments


def _nargs(tokens: list[bytes], low: int, high: int) -> None:
    if not low <= len(tokens) <= high:
        raise ProtocolError(
            ErrorCode.WRONG_ARGUMENT_COUNT, f"{len(tokens)} tokens, want {low}..{high}"
        )


def _no_modifiers(mods: bytes) -> None:
    if mods:
        raise ProtocolError(ErrorCode.MODIFIERS_NOT_ALLOWED, f"unexpected modifiers {mods!r}")


def _no_subcommands(subs: list[list[bytes]]) -> None:
    if subs:
        raise ProtocolError(ErrorCode.BAD_SUBCOMMAND, "command takes no sub-commands")


def _only_chars(mods: bytes, allowed: bytes, code: ErrorCode) -> None:
    if mods.lower().strip(allowed):
        raise ProtocolError(code, f"bad modifiers {mods!r}")


def _optional(tokens: list[bytes], index: int) -> bytes | None:
    return tokens[index] if len(tokens) > index else None


# --- U / L -----------------------------------------------------------------------------

_IPV4_CHARS = frozenset(b"0123456789.")


_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_DOTTED_IPV4 = re.compile(_OCTET + rb"(?:\." + _OCTET + rb"){3}")


def dotted_ipv4(text: bytes) -> bool:
    """Whether ``text`` is an IPv4 address as :class:`ipaddress.IPv4Address` accepts a
    string: four decimal octets of at most 255, without leading zeros. Such a text is
    also the address's canonical form."""
    return _DOTTED_IPV4.fullmatch(text) is not None


def _take_address(mods: bytes, pos: int, allow_label: bool) -> tuple[AddressSpec | None, int]:
    """Read an ``l``/``r`` argument starting at ``pos``; returns (spec or None, new pos)."""
    if pos < len(mods) and mods[pos : pos + 1] in (b"[", b"{"):
        closing = b"]" if mods[pos : pos + 1] == b"[" else b"}"
        end = mods.find(closing, pos + 1)
        if end < 0 or (closing == b"}" and not allow_label):
            return None, pos
        text = mods[pos + 1 : end].decode("latin-1")
        if not text:
            return None, pos
        # a bracketed address is syntactically fine; whether it is usable (E31/E32) is
        # decided when it is used (verified: Ul[1:2:3:4:5] → E31, Ur[1:2:3:4:5] → E32)
        return AddressSpec(text, is_label=closing == b"}"), end + 1
    end = pos
    while end < len(mods) and mods[end] in _IPV4_CHARS:
        end += 1
    if not dotted_ipv4(mods[pos:end]):
        return None, pos
    return AddressSpec(mods[pos:end].decode("latin-1")), end


def _take_digits(mods: bytes, pos: int, extra: bytes = b"") -> tuple[bytes, int]:
    end = pos
    while end < len(mods) and (0x30 <= mods[end] <= 0x39 or mods[end] in extra):
        end += 1
    return mods[pos:end], end


def _decimal(digits: bytes, cap: int) -> int:
    """``digits`` as an int saturating at ``cap``, without converting huge numbers
    (Python refuses strings of more than 4300 digits)."""
    significant = digits.lstrip(b"0")
    if len(significant) > len(str(cap)):
        return cap
    return min(int(significant or b"0"), cap)


_known_modifiers: tuple[dict[bytes, UpdateModifiers], dict[bytes, UpdateModifiers]] = ({}, {})


def parse_update_modifiers(mods: bytes, bridge_mode: bool) -> UpdateModifiers:
    """Parse U/L modifiers left to right; the first bad one decides the error code."""
    known = _known_modifiers[bridge_mode]
    modifiers = known.get(mods)
    if modifiers is None:  # the value is immutable: every command with these shares it
        modifiers = _parse_modifiers(mods, bridge_mode)
        if len(known) >= MODIFIER_CACHE:
            known.clear()
        known[mods] = modifiers
    return modifiers


def _parse_modifiers(mods: bytes, bridge_mode: bool) -> UpdateModifiers:
    asymmetric: bool | None = None
    weak = ipv6 = new_port = False
    interfaces: list[Interface] = []
    repacketize: int | None = None
    codecs: bytes | None = None
    local: AddressSpec | None = None
    remote: AddressSpec | None = None
    pos = 0
    while pos < len(mods):
        char = chr(mods[pos]).lower()
        pos += 1
        if char == "a":
            asymmetric = True
        elif char == "s":
            asymmetric = False
        elif char == "w":
            weak = True
        elif char in "ie":
            if not bridge_mode or len(interfaces) >= 2:
                code = (
                    ErrorCode.INTERNAL_WITHOUT_BRIDGE
                    if char == "i"
                    else ErrorCode.EXTERNAL_WITHOUT_BRIDGE
                )
                raise ProtocolError(code, "i/e needs bridge mode, at most twice")
            interfaces.append(Interface.INTERNAL if char == "i" else Interface.EXTERNAL)
        elif char == "6":
            ipv6 = True
        elif char == "z":
            digits, pos = _take_digits(mods, pos)
            repacketize = _decimal(digits, 1000)
            if not digits or not 1 <= repacketize <= 999:
                raise ProtocolError(ErrorCode.BAD_REPACKETIZE_TIME, "z wants 1..999")
        elif char == "c":
            digits, pos = _take_digits(mods, pos, b",")
            if not digits or codecs is not None:
                raise ProtocolError(ErrorCode.BAD_CODEC_LIST, "c wants a payload-type list, once")
            codecs = digits
        elif char == "l":
            local, pos = _take_address(mods, pos, allow_label=True)
            if local is None:
                raise ProtocolError(
                    ErrorCode.BAD_LOCAL_ADDRESS_SYNTAX, "l wants an address or {label}"
                )
        elif char == "r":
            remote, pos = _take_address(mods, pos, allow_label=False)
            if remote is None:
                raise ProtocolError(ErrorCode.BAD_REMOTE_ADDRESS_SYNTAX, "r wants an address")
        elif char == "n":
            new_port = True
        else:
            raise ProtocolError(ErrorCode.INVALID_MODIFIER, f"unknown modifier {char!r}")
    return UpdateModifiers(
        asymmetric=asymmetric,
        weak=weak,
        ipv6=ipv6,
        interfaces=tuple(interfaces),
        repacketize_ms=repacketize,
        codecs=codecs,
        local_address=local,
        remote_address=remote,
        new_port=new_port,
    )


_HEX = frozenset(b"0123456789abcdefABCDEF")


def url_decode(data: bytes) -> bytes:
    """Decode ``%XX`` escapes; a ``%`` without two hex digits is ``E10``."""
    if 0x25 not in data:  # an int needle: see _VT
        return data
    out = bytearray()
    pos = 0
    while pos < len(data):
        byte = data[pos]
        if byte == 0x25:  # '%'
            pair = data[pos + 1 : pos + 3]
            if len(pair) != 2 or not all(b in _HEX for b in pair):
                raise ProtocolError(ErrorCode.BAD_NOTIFY_TAG, "bad %-escape in notify tag")
            out.append(int(pair, 16))
            pos += 3
        else:
            out.append(byte)
            pos += 1
    return bytes(out)


def _parse_update(
    lookup_only: bool, mods: bytes, tokens: list[bytes], subs: list[list[bytes]], bridge: bool
) -> Update:
    _nargs(tokens, 5, 6 if lookup_only else 8)
    count = len(tokens)
    modifiers = parse_update_modifiers(mods, bridge)
    to_tag = notify_socket = notify_tag = None
    if count == 6 or count == 8:
        to_tag = tokens[5]
    if count >= 7:
        notify_socket, notify_tag = tokens[-2], url_decode(tokens[-1])
    # a single-shot U && L needs the answerer's tag (rtpproxy: E3 without it)
    allow_lookup = not lookup_only and to_tag is not None
    return Update(
        lookup_only,
        tokens[1],  # call-id
        tokens[2],  # address
        tokens[3],  # port
        tokens[4],  # from tag
        to_tag,
        notify_socket,
        notify_tag,
        modifiers,
        _parse_subcommands(subs, allow_lookup=allow_lookup, bridge=bridge) if subs else (),
    )


def _parse_subcommands(
    subs: list[list[bytes]], *, allow_lookup: bool, bridge: bool
) -> tuple[SubCommand, ...]:
    parsed: list[SubCommand] = []
    for tokens in subs:
        letter, mods = tokens[0][:1].upper(), tokens[0][1:]
        try:
            if letter == b"D" and len(tokens) == 1:
                _only_chars(mods, b"w", ErrorCode.BAD_SUBCOMMAND)
                parsed.append(SubDelete(weak=bool(mods)))
            elif letter == b"L" and allow_lookup and len(tokens) == 3:
                modifiers = parse_update_modifiers(mods, bridge)
                parsed.append(SubLookup(addr=tokens[1], port=tokens[2], modifiers=modifiers))
            elif letter == b"S" and len(tokens) == 2 and len(mods) <= 1:
                parsed.append(_parse_sub_set(mods, tokens[1]))
            else:
                raise ProtocolError(ErrorCode.BAD_SUBCOMMAND, f"unsupported sub-command {letter!r}")
        except ProtocolError as exc:
            raise ProtocolError(ErrorCode.BAD_SUBCOMMAND, exc.detail) from exc
    return tuple(parsed)


def _parse_sub_set(mods: bytes, setting: bytes) -> SubSet:
    """``S[r] ttl=N`` / ``S[r] tos=N``; N a decimal above 0 (a TOS at most 255)."""
    name, eq, value = setting.partition(b"=")
    if not eq or not value.isdigit() or len(value) > 9 or int(value) <= 0:
        raise ProtocolError(ErrorCode.BAD_SUBCOMMAND, f"bad S setting {setting!r}")
    other = mods.lower() == b"r"
    if name == b"ttl":
        return SubSet(other, ttl=int(value))
    if name == b"tos" and int(value) <= 255:
        return SubSet(other, tos=int(value))
    raise ProtocolError(ErrorCode.BAD_SUBCOMMAND, f"bad S setting {setting!r}")


# --- the other commands ----------------------------------------------------------------

ParserFn = Callable[[bytes, list[bytes], list[list[bytes]], bool], Command]


def _parse_u(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    return _parse_update(False, mods, t, subs, bridge)


def _parse_l(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    return _parse_update(True, mods, t, subs, bridge)


def _parse_d(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 3, 4)
    _no_subcommands(subs)
    _only_chars(mods, b"w", ErrorCode.UNKNOWN_DELETE_MODIFIER)
    return Delete(call_id=t[1], from_tag=t[2], to_tag=_optional(t, 3), weak=bool(mods))


def _parse_r(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 3, 4)
    _no_subcommands(subs)
    for char in mods.lower():
        if char == ord("p"):
            raise ProtocolError(ErrorCode.MISPLACED_RECORD_MODIFIER, "p is not allowed on R")
        if char != ord("s"):
            raise ProtocolError(ErrorCode.UNKNOWN_RECORD_MODIFIER, f"bad R modifiers {mods!r}")
    return Record(call_id=t[1], from_tag=t[2], to_tag=_optional(t, 3), single_file=bool(mods))


def _parse_n(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 3, 4)
    _no_subcommands(subs)
    lowered = mods.lower()
    if lowered and not lowered.startswith(b"a"):
        raise ProtocolError(ErrorCode.UNKNOWN_RECORD_MODIFIER, f"bad N modifiers {mods!r}")
    if len(lowered) > 1:
        raise ProtocolError(ErrorCode.MISPLACED_RECORD_MODIFIER, "nothing may follow N's a")
    return StopRecord(call_id=t[1], from_tag=t[2], to_tag=_optional(t, 3), both=bool(lowered))


def _parse_c(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 4, 5)
    _no_subcommands(subs)
    _only_chars(mods, b"sp", ErrorCode.UNKNOWN_RECORD_MODIFIER)
    lowered = mods.lower()
    return Copy(
        call_id=t[1],
        target=t[2],
        from_tag=t[3],
        to_tag=_optional(t, 4),
        single_file=b"s" in lowered,
        reply_port=b"p" in lowered,
    )


def _parse_p(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 5, 6)
    _no_subcommands(subs)
    count = 1
    if mods:
        sign, digits = (mods[:1], mods[1:]) if mods[:1] in (b"+", b"-") else (b"", mods)
        if not digits.isdigit():
            raise ProtocolError(ErrorCode.BAD_PLAY_COUNT, "P repeat count must be a number")
        count = _decimal(digits, 2**31 - 1) * (-1 if sign == b"-" else 1)
    return Play(
        call_id=t[1],
        prompt=t[2],
        codecs=t[3],
        from_tag=t[4],
        to_tag=_optional(t, 5),
        count=count,
    )


def _parse_s(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 3, 4)
    _no_modifiers(mods)
    _no_subcommands(subs)
    return StopPlay(call_id=t[1], from_tag=t[2], to_tag=_optional(t, 3))


def _parse_q(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 3, 15)
    bad = bool(mods.lower().strip(b"v"))
    return Query(
        call_id=t[1],
        from_tag=t[2],
        to_tag=_optional(t, 3),
        counters=tuple(t[4:]),
        verbose=bool(mods) and not bad,
        bad_modifier=bad,
        subcommands=_parse_subcommands(subs, allow_lookup=False, bridge=bridge),
    )


def _parse_v(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    if mods[:1].upper() == b"F":
        _nargs(t, 2, 2)
        _no_modifiers(mods[1:])
        _no_subcommands(subs)
        return VersionFeature(date=t[1])
    _nargs(t, 1, 1)
    _no_modifiers(mods)
    _no_subcommands(subs)
    return Version()


def _parse_i(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 1, 1)
    _no_subcommands(subs)
    _only_chars(mods, b"bl", ErrorCode.UNKNOWN_INFO_MODIFIER)
    lowered = mods.lower()
    return Info(brief=b"b" in lowered, load=b"l" in lowered)


def _parse_x(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 1, 1)
    _no_modifiers(mods)
    _no_subcommands(subs)
    return DeleteAll()


def _parse_g(mods: bytes, t: list[bytes], subs: list[list[bytes]], bridge: bool) -> Command:
    _nargs(t, 1, MAX_COUNTER_NAMES + 1)
    _no_subcommands(subs)
    _only_chars(mods, b"v", ErrorCode.UNKNOWN_COUNTERS_MODIFIER)
    return GetCounters(names=tuple(t[1:]), verbose=bool(mods))


_PARSERS: dict[bytes, ParserFn] = {
    b"U": _parse_u,
    b"L": _parse_l,
    b"D": _parse_d,
    b"R": _parse_r,
    b"N": _parse_n,
    b"C": _parse_c,
    b"P": _parse_p,
    b"S": _parse_s,
    b"Q": _parse_q,
    b"V": _parse_v,
    b"I": _parse_i,
    b"X": _parse_x,
    b"G": _parse_g,
}
