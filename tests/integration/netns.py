"""A private network namespace for tests that change the network (nftables): the relay
runs in it with ``ip netns exec``, and test sockets are created in it from a thread that
joined it (``setns`` moves only the calling thread; its sockets stay in the namespace)."""

from __future__ import annotations

import ctypes
import functools
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
PREFIX = "pyrtpk-"


@functools.cache
def namespaces_available() -> str | None:
    """Why namespaces cannot be used here, or None (checked by creating one)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian: iproute2, nftables)"
    try:
        probe = NetNamespace()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create a network namespace here: {exc}"
    probe.delete()
    return None


class NetNamespace:
    """``ip netns add`` on creation, ``ip netns del`` on :meth:`delete`; lo is up."""

    def __init__(self) -> None:
        self.name = PREFIX + secrets.token_hex(4)
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            subprocess.run(
                ["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True
            )
        except subprocess.CalledProcessError:
            self.delete()
            raise

    @property
    def wrapper(self) -> tuple[str, ...]:
        """Command prefix that runs a program in the namespace."""
        return ("ip", "netns", "exec", self.name)

    def run(self, *cmd: str) -> str:
        """Run a command in the namespace; its stdout."""
        done = subprocess.run([*self.wrapper, *cmd], capture_output=True, text=True, check=True)
        return done.stdout

    def call(self, make: Callable[[], T]) -> T:
        """Call ``make`` in a thread inside the namespace (to create sockets there)."""
        result: list[T] = []
        errors: list[BaseException] = []

        def inside() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
                result.append(make())
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)
            finally:
                os.close(fd)

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def delete(self) -> None:
        """Remove the namespace (its processes must be gone)."""
        subprocess.run(["ip", "netns", "del", self.name], check=False)
