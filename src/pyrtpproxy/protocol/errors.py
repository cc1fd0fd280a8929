"""rtpproxy error codes and the exception that carries one."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """The ``E<n>`` codes of the rtpproxy control protocol (numbers are fixed by clients)."""

    CMDUNKN = 0
    PARSE_NARGS = 1
    PARSE_MODS = 2
    PARSE_SUBC = 3
    PARSE_1 = 5
    PARSE_2 = 6
    PARSE_3 = 7
    PARSE_4 = 8
    PARSE_5 = 9
    PARSE_10 = 10
    PARSE_11 = 11
    PARSE_12 = 12
    PARSE_13 = 13
    PARSE_14 = 14
    PARSE_15 = 15
    PARSE_16 = 16
    PARSE_6 = 17
    PARSE_7 = 18
    PARSE_8 = 19
    RTOOBIG_1 = 25
    RTOOBIG_2 = 26
    INVLARG_1 = 31
    INVLARG_2 = 32
    INVLARG_5 = 35
    INVLARG_6 = 36
    INVLARG_7 = 37
    SESUNKN = 50
    PLRFAIL = 60
    QRYFAIL = 62
    CPYFAIL = 65
    STSFAIL = 68
    LSTFAIL_1 = 71
    LSTFAIL_2 = 72
    NSOFF = 75
    NOMEM_1 = 81
    NOMEM_9 = 89
    OVERLOAD = 98
    SLOWSHTDN = 99

    @property
    def wire(self) -> bytes:
        """The code as sent to clients, e.g. ``b"E50"``."""
        return b"E%d" % self.value


class ProtocolError(Exception):
    """A command failed with an rtpproxy error code; the control layer replies ``E<n>``."""

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(f"E{code.value} ({code.name}){': ' + detail if detail else ''}")
        self.code = code
        self.detail = detail
