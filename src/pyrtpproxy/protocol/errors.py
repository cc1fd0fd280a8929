"""rtpproxy error codes and the exception that carries one (error-codes.md)."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """The ``E<n>`` codes of the rtpproxy control protocol, named by what they mean.

    The numbers are fixed by clients; :attr:`reference_name` gives the name the C
    rtpproxy uses for each (``SESUNKN`` for :attr:`NO_SESSION`, say).
    """

    UNKNOWN_COMMAND = 0
    WRONG_ARGUMENT_COUNT = 1
    MODIFIERS_NOT_ALLOWED = 2
    BAD_SUBCOMMAND = 3
    SYNTAX = 5
    MISPLACED_RECORD_MODIFIER = 6
    UNKNOWN_RECORD_MODIFIER = 7
    UNKNOWN_DELETE_MODIFIER = 8
    UNKNOWN_COUNTERS_MODIFIER = 9
    BAD_NOTIFY_TAG = 10
    EXTERNAL_WITHOUT_BRIDGE = 11
    INTERNAL_WITHOUT_BRIDGE = 12
    BAD_REPACKETIZE_TIME = 13
    BAD_CODEC_LIST = 14
    BAD_LOCAL_ADDRESS_SYNTAX = 15
    BAD_REMOTE_ADDRESS_SYNTAX = 16
    BAD_PLAY_COUNT = 17
    UNKNOWN_INFO_MODIFIER = 18
    UNKNOWN_QUERY_MODIFIER = 19
    COUNTERS_REPLY_TOO_LONG = 25
    QUERY_REPLY_TOO_LONG = 26
    NOT_A_LOCAL_ADDRESS = 31
    NO_ROUTE_TO_REMOTE = 32
    INVALID_MODIFIER = 35
    NO_ADDRESS_OF_FAMILY = 36
    BAD_ADDRESS = 37
    NO_SESSION = 50
    PLAY_FAILED = 60
    UNKNOWN_QUERY_COUNTER = 62
    COPY_FAILED = 65
    UNKNOWN_COUNTER = 68
    NO_PORT_FOR_LEG = 71
    NO_PORT_FOR_SESSION = 72
    NOTIFY_DISABLED = 75
    OUT_OF_MEMORY = 81
    INTERNAL_ERROR = 89
    OVERLOADED = 98
    SHUTTING_DOWN = 99

    @property
    def wire(self) -> bytes:
        """The code as sent to clients, e.g. ``b"E50"``."""
        return b"E%d" % self.value

    @property
    def reference_name(self) -> str:
        """The C rtpproxy's name for this code (``ECODE_<name>``)."""
        return _REFERENCE_NAMES[self]


_REFERENCE_NAMES: dict[ErrorCode, str] = {
    ErrorCode.UNKNOWN_COMMAND: "CMDUNKN",
    ErrorCode.WRONG_ARGUMENT_COUNT: "PARSE_NARGS",
    ErrorCode.MODIFIERS_NOT_ALLOWED: "PARSE_MODS",
    ErrorCode.BAD_SUBCOMMAND: "PARSE_SUBC",
    ErrorCode.SYNTAX: "PARSE_1",
    ErrorCode.MISPLACED_RECORD_MODIFIER: "PARSE_2",
    ErrorCode.UNKNOWN_RECORD_MODIFIER: "PARSE_3",
    ErrorCode.UNKNOWN_DELETE_MODIFIER: "PARSE_4",
    ErrorCode.UNKNOWN_COUNTERS_MODIFIER: "PARSE_5",
    ErrorCode.BAD_NOTIFY_TAG: "PARSE_10",
    ErrorCode.EXTERNAL_WITHOUT_BRIDGE: "PARSE_11",
    ErrorCode.INTERNAL_WITHOUT_BRIDGE: "PARSE_12",
    ErrorCode.BAD_REPACKETIZE_TIME: "PARSE_13",
    ErrorCode.BAD_CODEC_LIST: "PARSE_14",
    ErrorCode.BAD_LOCAL_ADDRESS_SYNTAX: "PARSE_15",
    ErrorCode.BAD_REMOTE_ADDRESS_SYNTAX: "PARSE_16",
    ErrorCode.BAD_PLAY_COUNT: "PARSE_6",
    ErrorCode.UNKNOWN_INFO_MODIFIER: "PARSE_7",
    ErrorCode.UNKNOWN_QUERY_MODIFIER: "PARSE_8",
    ErrorCode.COUNTERS_REPLY_TOO_LONG: "RTOOBIG_1",
    ErrorCode.QUERY_REPLY_TOO_LONG: "RTOOBIG_2",
    ErrorCode.NOT_A_LOCAL_ADDRESS: "INVLARG_1",
    ErrorCode.NO_ROUTE_TO_REMOTE: "INVLARG_2",
    ErrorCode.INVALID_MODIFIER: "INVLARG_5",
    ErrorCode.NO_ADDRESS_OF_FAMILY: "INVLARG_6",
    ErrorCode.BAD_ADDRESS: "INVLARG_7",
    ErrorCode.NO_SESSION: "SESUNKN",
    ErrorCode.PLAY_FAILED: "PLRFAIL",
    ErrorCode.UNKNOWN_QUERY_COUNTER: "QRYFAIL",
    ErrorCode.COPY_FAILED: "CPYFAIL",
    ErrorCode.UNKNOWN_COUNTER: "STSFAIL",
    ErrorCode.NO_PORT_FOR_LEG: "LSTFAIL_1",
    ErrorCode.NO_PORT_FOR_SESSION: "LSTFAIL_2",
    ErrorCode.NOTIFY_DISABLED: "NSOFF",
    ErrorCode.OUT_OF_MEMORY: "NOMEM_1",
    ErrorCode.INTERNAL_ERROR: "NOMEM_9",
    ErrorCode.OVERLOADED: "OVERLOAD",
    ErrorCode.SHUTTING_DOWN: "SLOWSHTDN",
}


class ProtocolError(Exception):
    """A command failed with an rtpproxy error code; the control layer replies ``E<n>``."""

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(f"E{code.value} ({code.name}){': ' + detail if detail else ''}")
        self.code = code
        self.detail = detail
