"""Settings every test shares.

Relays started by tests run in this machine's own network namespace unless a test made
one for them, and there they must not change the host's nftables (and, as root, the
default ``--kernel-forward auto`` would): so media stays in user space unless a test
asks for the kernel path with an explicit ``--kernel-forward``, which the environment
variable never overrides.
"""

from __future__ import annotations

import os

os.environ["PYRTPPROXY_KERNEL_FORWARD"] = "off"
