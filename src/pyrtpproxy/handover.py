"""Planned restart: a new relay takes over a running one's sockets (``--state-file``).

The running relay listens on ``PATH.handover`` (a Unix ``SOCK_SEQPACKET`` socket next to
the journal). A relay started with the same ``--state-file`` while it runs connects
there and says hello; the old relay then

1. stops accepting commands (its listening sockets stay open: the kernel queues new
   connections and datagrams) and serves the commands already accepted;
2. stops reading media (the kernel queues the packets on the sockets);
3. writes its final journal;
4. sends every media socket (each stream's unconnected socket and the connected one
   aimed at its party) and every control socket with ``SCM_RIGHTS``, then ``done``;

and the new relay adopts the sockets instead of binding, restores the sessions from
the journal, starts reading and answers ``ready``, upon which the old one exits. No
packet is lost and no command refused: nothing is closed in between, only not read for
a moment. If the new relay goes away before ``ready``, the old one serves again.

The messages are small JSON objects; file descriptors travel in batches of at most
:data:`FDS_PER_MESSAGE`, below the kernel's limit per message.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PROTOCOL = 1
SUFFIX = ".handover"
FDS_PER_MESSAGE = 200  # the kernel takes at most 253 (SCM_MAX_FD) per message
MAX_MESSAGE = 65536
HELLO_TIMEOUT = 2.0  # seconds the old relay waits for the newcomer's hello
TRANSFER_TIMEOUT = 10.0  # seconds either side waits for the other's next message

MEDIA = "media"  # a media socket: its port and peer say which stream it serves


class HandoverError(Exception):
    """The other relay broke off, or spoke nonsense."""


def socket_path(state_file: str) -> str:
    """Where a relay with ``state_file`` listens for its successor."""
    return state_file + SUFFIX


def send_message(sock: socket.socket, message: dict[str, Any], fds: Iterable[int] = ()) -> None:
    """One JSON message, with file descriptors attached."""
    data = json.dumps(message).encode()
    fd_list = list(fds)
    if fd_list:
        socket.send_fds(sock, [data], fd_list)
    else:
        sock.sendall(data)


def receive_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One JSON message and the descriptors that came with it."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, FDS_PER_MESSAGE + 1)
    if not data:
        for fd in fds:
            os.close(fd)
        raise HandoverError("the other relay closed the connection")
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        for fd in fds:
            os.close(fd)
        raise HandoverError("not a hand-over message")
    return message, fds


@dataclass
class Inherited:
    """What a new relay got from the old one: sockets by what they are."""

    media: list[socket.socket] = field(default_factory=list)
    control: dict[str, list[socket.socket]] = field(default_factory=dict)

    def close(self) -> None:
        """Close whatever nobody took."""
        for sock in self.media:
            sock.close()
        for socks in self.control.values():
            for sock in socks:
                sock.close()
        self.media.clear()
        self.control.clear()


def send_sockets(sock: socket.socket, entries: list[tuple[str, int]]) -> None:
    """Send ``(what, fd)`` pairs (``what``: :data:`MEDIA` or a control spec) in batches,
    then ``done``."""
    for start in range(0, len(entries), FDS_PER_MESSAGE):
        batch = entries[start : start + FDS_PER_MESSAGE]
        send_message(sock, {"sockets": [what for what, _fd in batch]}, [fd for _w, fd in batch])
    send_message(sock, {"done": True})


def take_over(path: str) -> tuple[socket.socket, Inherited] | None:
    """Ask the relay listening at ``path`` for its sockets. None if nobody listens
    there; raises :class:`HandoverError` if the transfer breaks off. The returned
    connection is for :func:`confirm` once the sockets are served."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    inherited = Inherited()
    try:
        conn.settimeout(TRANSFER_TIMEOUT)
        send_message(conn, {"hello": PROTOCOL, "pid": os.getpid()})
        while True:
            message, fds = receive_message(conn)
            if message.get("done"):
                for fd in fds:
                    os.close(fd)
                return conn, inherited
            if "error" in message:
                raise HandoverError(str(message["error"]))
            kinds = message.get("sockets")
            if not isinstance(kinds, list) or len(kinds) != len(fds):
                for fd in fds:
                    os.close(fd)
                raise HandoverError("socket list does not match the descriptors")
            for what, fd in zip(kinds, fds, strict=True):
                sock = socket.socket(fileno=fd)
                sock.setblocking(False)
                if what == MEDIA:
                    inherited.media.append(sock)
                else:
                    inherited.control.setdefault(str(what), []).append(sock)
    except (OSError, HandoverError) as exc:
        inherited.close()
        conn.close()
        raise HandoverError(str(exc)) from None


def confirm(conn: socket.socket) -> None:
    """Tell the old relay that its sockets are served: it exits."""
    with contextlib.suppress(OSError):
        send_message(conn, {"ready": True, "pid": os.getpid()})
    conn.close()


def sd_notify(message: str) -> None:
    """Tell systemd (``Type=notify``) about the service, if it listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.sendto(message.encode(), address)
