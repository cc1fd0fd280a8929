"""The ``VF`` capability dates and which of them this build really supports."""

from __future__ import annotations

from dataclasses import dataclass

BASE_VERSION = b"20040107"
NOTIFY_CAPABILITY = b"20081224"


@dataclass(frozen=True, slots=True)
class Capability:
    """One protocol extension, identified by the date rtpproxy introduced it."""

    date: bytes
    description: str
    supported: bool


# Order and descriptions follow rtpproxy's `-v` listing so operators recognise them.
# ``supported`` is True only for what really works in this build: clients switch features
# on from these answers.
CAPABILITIES: tuple[Capability, ...] = (
    Capability(b"20040107", "Basic RTP proxy functionality", True),
    Capability(b"20050322", "Support for multiple RTP streams and MOH", True),
    Capability(b"20060704", "Support for extra parameter in the V command", True),
    Capability(b"20071116", "Support for RTP re-packetization", True),
    Capability(b"20071218", "Support for forking (copying) RTP stream", True),
    Capability(b"20080403", "Support for RTP statistics querying", True),
    Capability(b"20081102", "Support for setting codecs in the update/lookup command", True),
    Capability(b"20081224", "Support for session timeouts notification", True),
    Capability(b"20090810", "Support for automatic bridging", True),
    Capability(b"20140323", "Support for tracking/reporting load", False),
    Capability(b"20140617", "Support for anchoring session connect time", False),
    Capability(b"20141004", "Support for extendable performance counters", True),
    Capability(b"20150330", 'Support for allocating a new port ("Un"/"Ln")', True),
    Capability(
        b"20150420", "Support for SEQ tracking and new rtpa_ counters; Q command extended", True
    ),
    Capability(
        b"20150617", "Support for the wildcard %%CC_SELF%% as a disconnect notify target", True
    ),
    # && D, && L and && S work as in rtpproxy; module sub-commands (OpenSIPS DTMF:
    # M3:1 ...) answer E3, as rtpproxy's do when no module is loaded.
    Capability(b"20191015", "Support for the && sub-command specifier", True),
    Capability(b"20200226", "Support for the N command to stop recording", True),
    Capability(b"20230205", "Support for rtpa_nlost counter; catch_dtmf h modifier", False),
    Capability(b"20230314", 'Support for for "fusing" G and D commands', True),
    Capability(b"20230424", "Support for longest_ipi, rtpa_jlast, rtpa_jmax and rtpa_javg", True),
    Capability(b"20250523", "Support for the p modifier in the C command", True),
    Capability(b"20251015", "Support for changing ttl/tos via the S sub-command", True),
    Capability(b"20260306", "Support for address labels l{label} in U/L", True),
    Capability(b"20260308", "Support for single-shot U ... && L ...", True),
    Capability(b"20260309", "Support for the C sub-command forking both streams", False),
)

_SUPPORTED = frozenset(c.date for c in CAPABILITIES if c.supported)


def supports(date: bytes, notify_configured: bool) -> bool:
    """Answer a ``VF <date>`` query: notifications count only when ``-n`` was given."""
    if date == NOTIFY_CAPABILITY:
        return notify_configured
    return date in _SUPPORTED
