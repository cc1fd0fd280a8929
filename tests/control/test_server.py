"""The ``unix:`` listener on real sockets and a running event loop (the rest of the
control transports is in integration)."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from engine.support import FakeClock, make_engine
from pyrtpproxy.control.processor import CommandProcessor
from pyrtpproxy.control.server import (
    CONTROL_RECEIVE_BUFFER,
    SO_RCVBUFFORCE,
    OneShotListener,
    _enlarge_receive_buffer,
)
from pyrtpproxy.engine.engine import RequestContext

VERSION_REPLY = b"20040107\n"
Run = Callable[[Any], Any]


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request: pytest.FixtureRequest) -> Run:
    """The relay's event loop, and asyncio's own (add_reader and add_writer on both)."""
    return uvloop.run if request.param == "uvloop" else asyncio.run  # type: ignore[no-any-return]


class BigReplies:
    """A processor whose every reply is ``size`` bytes: more than a socket buffer holds."""

    def __init__(self, size: int) -> None:
        self.reply = bytes(range(256)) * (size // 256)

    def handle(self, data: bytes, ctx: RequestContext) -> bytes:
        return self.reply


@asynccontextmanager
async def listening(
    path: Path,
    processor: object | None = None,
    *,
    idle: float = 5.0,
    limit: int = 100,
    on_refused: Callable[[], None] | None = None,
) -> AsyncIterator[OneShotListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(128)
    listener = OneShotListener(
        sock,
        processor or CommandProcessor(make_engine(), FakeClock()),  # type: ignore[arg-type]
        asyncio.get_running_loop(),
        idle=idle,
        limit=limit,
        on_refused=on_refused,
    )
    try:
        yield listener
    finally:
        listener.close()


async def connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))


async def answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the relay sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), 5)


def test_a_command_is_answered_and_the_connection_closed(tmp_path: Path, run: Run) -> None:
    async def scenario() -> tuple[bytes, int]:
        async with listening(tmp_path / "s") as listener:
            reader, writer = await connect(tmp_path / "s")
            writer.write(b"V")
            reply = await answer(reader)  # read() returns at EOF: the relay closed
            writer.close()
            return reply, listener.waiting

    assert run(scenario()) == (VERSION_REPLY, 0)


def test_a_command_written_after_the_accept_is_answered(tmp_path: Path, run: Run) -> None:
    async def scenario() -> tuple[int, bytes, int]:
        async with listening(tmp_path / "s") as listener:
            reader, writer = await connect(tmp_path / "s")
            await asyncio.sleep(0.05)  # accepted meanwhile, nothing to read yet
            waiting = listener.waiting
            writer.write(b"V\n")
            reply = await answer(reader)
            writer.close()
            return waiting, reply, listener.waiting

    assert run(scenario()) == (1, VERSION_REPLY, 0)


def test_a_silent_connection_is_closed_after_the_idle_time(tmp_path: Path, run: Run) -> None:
    async def scenario() -> tuple[bool, bytes, int]:
        async with listening(tmp_path / "s", idle=0.1) as listener:
            reader, writer = await connect(tmp_path / "s")
            await asyncio.sleep(0.03)
            still_open = not reader.at_eof() and listener.waiting == 1  # time to write
            reply = await answer(reader)
            writer.close()
            return still_open, reply, listener.waiting

    assert run(scenario()) == (True, b"", 0)


def test_a_connection_closed_without_a_command_gets_no_reply(tmp_path: Path, run: Run) -> None:
    async def scenario() -> tuple[bytes, int]:
        async with listening(tmp_path / "s") as listener:
            reader, writer = await connect(tmp_path / "s")
            writer.write_eof()
            reply = await answer(reader)
            writer.close()
            return reply, listener.waiting

    assert run(scenario()) == (b"", 0)


def test_a_reply_bigger_than_the_socket_buffer_arrives_whole(tmp_path: Path, run: Run) -> None:
    processor = BigReplies(4 * 1024 * 1024)

    async def scenario() -> bytes:
        async with listening(tmp_path / "s", processor):
            reader, writer = await connect(tmp_path / "s")
            writer.write(b"V")
            await asyncio.sleep(0.05)  # the relay fills the buffer and waits to write more
            reply = await answer(reader)
            writer.close()
            return reply

    assert run(scenario()) == processor.reply


def test_connections_beyond_the_waiting_limit_are_refused(tmp_path: Path, run: Run) -> None:
    refused: list[int] = []

    async def scenario() -> tuple[int, bytes, bytes]:
        async with listening(tmp_path / "s", limit=2, on_refused=lambda: refused.append(1)) as lsn:
            silent = [await connect(tmp_path / "s") for _ in range(3)]
            await asyncio.sleep(0.05)
            waiting = lsn.waiting
            refused_reply = await answer(silent[2][0])  # closed at once
            reader, writer = silent[0]
            writer.write(b"V")  # a waiting one is still served
            served = await answer(reader)
            for _, w in silent:
                w.close()
            return waiting, refused_reply, served

    assert run(scenario()) == (2, b"", VERSION_REPLY)
    assert refused == [1]


def test_closing_stops_accepting_and_closes_waiting_connections(tmp_path: Path, run: Run) -> None:
    async def scenario() -> tuple[bytes, int, int]:
        async with listening(tmp_path / "s") as listener:
            reader, writer = await connect(tmp_path / "s")
            await asyncio.sleep(0.05)
            listener.close()
            dropped = await answer(reader)
            writer.close()
            try:
                await connect(tmp_path / "s")
            except ConnectionRefusedError:
                refused = 1
            else:
                refused = 0
            return dropped, listener.waiting, refused

    assert run(scenario()) == (b"", 0, 1)


def test_out_of_descriptors_pauses_accepting_without_spinning(
    tmp_path: Path, run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    def unanswered(client: socket.socket) -> bool:
        try:
            client.recv(100, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        return False

    async def scenario() -> tuple[bool, float, bytes]:
        loop = asyncio.get_running_loop()
        async with listening(tmp_path / "s"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                # connected and written before the listener runs: its accept comes after
                client.connect(str(tmp_path / "s"))
                client.send(b"V")
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                lowest_free = os.dup(0)
                os.close(lowest_free)
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # EMFILE
                try:
                    cpu = time.process_time()
                    await asyncio.sleep(0.08)
                    cpu = time.process_time() - cpu
                    waited = unanswered(client)
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                client.setblocking(False)
                reply = await asyncio.wait_for(loop.sock_recv(client, 100), 5)
        return waited, cpu, reply

    with caplog.at_level(logging.WARNING, logger="pyrtpproxy.control"):
        waited, cpu, reply = run(scenario())
    assert waited and reply == VERSION_REPLY  # served once the pause was over
    assert cpu < 0.04  # resting, not retrying a readable socket in a loop
    failures = [r.getMessage() for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(failures) == 1 and "Too many open files" in failures[0]


class _CappedSocket:
    """A UDP socket as an unprivileged relay sees it: no SO_RCVBUFFORCE, and SO_RCVBUF
    capped by net.core.rmem_max (the kernel reports twice what it grants)."""

    def __init__(self, rmem_max: int) -> None:
        self.rmem_max = rmem_max
        self.granted = 212992

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option == SO_RCVBUFFORCE:
            raise PermissionError(1, "Operation not permitted")
        assert option == socket.SO_RCVBUF
        self.granted = min(value, self.rmem_max)

    def getsockopt(self, level: int, option: int) -> int:
        return 2 * self.granted


def test_receive_buffer_beyond_rmem_max_needs_privileges(
    caplog: pytest.LogCaptureFixture,
) -> None:
    capped = _CappedSocket(rmem_max=212992)
    with caplog.at_level(logging.INFO, logger="pyrtpproxy.control"):
        _enlarge_receive_buffer("udp:127.0.0.1:22222", capped)  # type: ignore[arg-type]
    assert capped.granted == 212992
    assert caplog.messages == [
        "udp:127.0.0.1:22222: receive buffer 212992 bytes (net.core.rmem_max), not 1048576: "
        "a burst of commands beyond it is dropped"
    ]
    roomy = _CappedSocket(rmem_max=4 << 20)
    caplog.clear()
    _enlarge_receive_buffer("udp:127.0.0.1:22222", roomy)  # type: ignore[arg-type]
    assert roomy.granted == CONTROL_RECEIVE_BUFFER and caplog.messages == []


def test_receive_buffer_of_a_real_socket() -> None:
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    expected = (
        CONTROL_RECEIVE_BUFFER if os.geteuid() == 0 else min(rmem_max, CONTROL_RECEIVE_BUFFER)
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _enlarge_receive_buffer("udp:", sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * expected
