"""The sendfile reactor on its own: real sockets, real files, one worker thread.

A transfer that fails in the worker (here: a descriptor epoll refuses to watch, which is
what a regular file is) fails alone; the worker goes on with the next transfers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_mirror.api.sendfile import SendfileReactor, TransferError

DATA = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture
def blob(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def _receive(sock: socket.socket, size: int, into: list[bytes]) -> threading.Thread:
    def run() -> None:
        got = bytearray()
        while len(got) < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        into.append(bytes(got))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def _send_over_socketpair(reactor: SendfileReactor, blob: int, start: int) -> bytes:
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        received: list[bytes] = []
        reader = _receive(theirs, len(DATA) - start, received)
        await asyncio.wait_for(reactor.send(ours.fileno(), blob, start, len(DATA) - start), 20)
        ours.shutdown(socket.SHUT_WR)
        await asyncio.to_thread(reader.join, 20)
        return received[0]
    finally:
        ours.close()
        theirs.close()


def test_a_failing_transfer_fails_alone_and_the_worker_survives(blob: int, tmp_path: Path) -> None:
    async def scenario() -> None:
        reactor = SendfileReactor(workers=1)
        try:
            not_a_socket = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT)
            try:
                with pytest.raises(TransferError):
                    await asyncio.wait_for(reactor.send(not_a_socket, blob, 0, 100), 10)
            finally:
                os.close(not_a_socket)
            # The same (only) worker serves the next transfers, whole and exact.
            assert await _send_over_socketpair(reactor, blob, 0) == DATA
            assert await _send_over_socketpair(reactor, blob, 1000) == DATA[1000:]
            assert "0 transfers" in repr(reactor)
        finally:
            reactor.close()

    asyncio.run(scenario())


def test_descriptors_of_failed_transfers_are_closed(blob: int, tmp_path: Path) -> None:
    async def scenario() -> None:
        reactor = SendfileReactor(workers=1)
        try:
            not_a_socket = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT)
            before = len(os.listdir("/proc/self/fd"))
            try:
                for _ in range(50):
                    with pytest.raises(TransferError):
                        await asyncio.wait_for(reactor.send(not_a_socket, blob, 0, 100), 10)
            finally:
                os.close(not_a_socket)
            assert len(os.listdir("/proc/self/fd")) <= before
        finally:
            reactor.close()

    asyncio.run(scenario())


def test_a_client_that_takes_nothing_is_dropped_after_the_stall_timeout(blob: int) -> None:
    async def scenario() -> None:
        reactor = SendfileReactor(workers=1, stall_timeout=1.0)
        ours, theirs = socket.socketpair()
        try:
            ours.setblocking(False)
            with pytest.raises(TransferError, match="stalled"):
                await asyncio.wait_for(reactor.send(ours.fileno(), blob, 0, len(DATA)), 15)
            # The worker is still there for the next client.
            assert await _send_over_socketpair(reactor, blob, 0) == DATA
        finally:
            ours.close()
            theirs.close()
            reactor.close()

    asyncio.run(scenario())


def test_no_fixed_send_buffer(blob: int) -> None:
    """The socket's send buffer is left to the kernel (autotuning): a transfer does not
    set SO_SNDBUF, which would lock it at a fixed size."""

    async def scenario() -> None:
        reactor = SendfileReactor(workers=1)
        ours, theirs = socket.socketpair()
        try:
            ours.setblocking(False)
            before = ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            received: list[bytes] = []
            reader = _receive(theirs, len(DATA), received)
            await asyncio.wait_for(reactor.send(ours.fileno(), blob, 0, len(DATA)), 20)
            await asyncio.to_thread(reader.join, 20)
            assert received[0] == DATA
            assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
        finally:
            ours.close()
            theirs.close()
            reactor.close()

    asyncio.run(scenario())
