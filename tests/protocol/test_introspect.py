"""The ``Zsessions`` extension's grammar: exactly that word and two numbers, nothing else
(docs/ctl.md); every other ``Z`` command stays rtpproxy's ``E0``."""

from __future__ import annotations

import pytest

from pyrtpproxy.protocol.commands import Introspect
from pyrtpproxy.protocol.errors import ErrorCode, ProtocolError
from pyrtpproxy.protocol.parse import parse
from pyrtpproxy.protocol.sessions import DEFAULT_LIMIT, MAX_LIMIT


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Zsessions", (0, DEFAULT_LIMIT)),
        (b"Zsessions 10", (10, DEFAULT_LIMIT)),
        (b"  Zsessions 10 5\n", (10, 5)),
        (b"Zsessions 0 999999", (0, MAX_LIMIT)),
        (b"Z", None),
        (b"Zs", None),
        (b"zsessions", None),
        (b"ZSESSIONS", None),
        (b"Zsessionsx", None),
        (b"Zsessions x", None),
        (b"Zsessions 1 2 3", None),
        (b"Zsessions && D c t", None),
        (b"V", None),
        (b"U c 1.2.3.4 5 t", None),
    ],
)
def test_extension_grammar_is_exact(data: bytes, expected: tuple[int, int] | None) -> None:
    try:
        command = parse(data)
    except ProtocolError:
        command = None
    if expected is None:
        assert not isinstance(command, Introspect)
    else:
        assert command == Introspect(*expected)


@pytest.mark.parametrize("word", [b"Z", b"Zx", b"zsessions", b"Zsessions foo", b"Zsessions 1 2 3"])
def test_other_z_commands_are_unknown(word: bytes) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse(word)
    assert raised.value.code is ErrorCode.UNKNOWN_COMMAND
