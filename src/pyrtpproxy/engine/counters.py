"""Global counters reported by ``G`` and ``I`` (relay-behaviour.md §8)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class GlobalCounters:
    """Counters that only grow. Packet counters of live sessions are added at read time
    (see :meth:`pyrtpproxy.engine.handler.Engine.counter_values`) so the media path never
    touches this object."""

    nsess_created: int = 0
    nsess_destroyed: int = 0
    nsess_timeout: int = 0
    nsess_complete: int = 0
    nsess_nortp: int = 0
    nsess_owrtp: int = 0
    nsess_nortcp: int = 0
    nsess_owrtcp: int = 0
    nplrs_created: int = 0
    nplrs_destroyed: int = 0
    npkts_rcvd: int = 0
    npkts_played: int = 0
    npkts_relayed: int = 0
    npkts_resizer_in: int = 0
    npkts_resizer_out: int = 0
    npkts_resizer_discard: int = 0
    npkts_discard: int = 0
    total_duration: float = 0.0
    ncmds_rcvd: int = 0
    ncmds_rcvd_ndups: int = 0
    ncmds_succd: int = 0
    ncmds_errs: int = 0
    ncmds_repld: int = 0
    rtpa_nsent: int = 0
    rtpa_nrcvd: int = 0
    rtpa_ndups: int = 0
    rtpa_nlost: int = 0
    rtpa_perrs: int = 0
    pps_in: float = 0.0


COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(GlobalCounters))
PACKET_COUNTERS = ("npkts_rcvd", "npkts_relayed", "npkts_discard")
RTPA_COUNTERS = ("rtpa_nsent", "rtpa_nrcvd", "rtpa_ndups", "rtpa_nlost", "rtpa_perrs")


def format_value(value: int | float) -> bytes:
    """Integers as plain decimals, floats with six decimals (rtpproxy's ``%f``)."""
    if isinstance(value, float):
        return b"%f" % value
    return b"%d" % value
