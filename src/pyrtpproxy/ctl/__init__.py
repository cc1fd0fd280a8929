"""``pyrtpproxy ctl``: talk to a running relay over any control transport (docs/ctl.md).

``pyrtpproxy ctl -s SPEC COMMAND...`` sends one rtpproxy command and prints the reply;
``sessions`` lists live sessions through the ``Zsessions`` extension and ``top`` keeps
refreshing that list with packet rates. Works against rtpproxy too, except for the
extension (rtpproxy answers ``E0``, which is reported as "not supported").
"""

from .client import ControlClient, CtlError, NotSupported
from .command import main

__all__ = ["ControlClient", "CtlError", "NotSupported", "main"]
