"""Zero-copy file → socket transfers for cache hits.

uvloop has no ``loop.sendfile``. Instead of copying bytes through Python, a few
worker threads multiplex every transfer in flight: each waits (``epoll``) until
one of its client sockets can take more, then calls ``os.sendfile`` for it. The event
loop only hands a transfer over and awaits its completion, so neither disk
reads nor copies ever run on the loop, and a slow client holds no thread.

Only for plain TCP: under TLS the bytes must go through the TLS transport, so the
routes stream those responses instead. The socket's send buffer is left to the
kernel's autotuning (a fixed size would cap throughput on high-latency links).
A failure of one transfer (a descriptor that cannot be watched, an unexpected error)
fails that transfer only; the worker thread goes on with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["SendfileReactor", "TransferError"]

log = logging.getLogger(__name__)

CHUNK: Final = 16 * 1024 * 1024
STALL_TIMEOUT: Final = 300.0  # default: a client that takes nothing for this long is dropped


class TransferError(ConnectionError):
    """The client went away or stalled, or the file could not be read."""


@dataclass(eq=False)
class _Transfer:
    sock_fd: int
    file_fd: int
    offset: int
    remaining: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    last_progress: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    finished: bool = False


class SendfileReactor:
    """Hands transfers to a few worker threads (one per core by default), the one with
    the fewest transfers first: the kernel's copy then runs on every core."""

    def __init__(self, workers: int | None = None, *, stall_timeout: float = STALL_TIMEOUT) -> None:
        count = workers or min(4, os.cpu_count() or 1)
        self._workers = [_Worker(i, stall_timeout) for i in range(count)]

    def __repr__(self) -> str:
        active = sum(len(w) for w in self._workers)
        return f"<SendfileReactor {len(self._workers)} workers, {active} transfers>"

    async def send(self, sock_fd: int, file_fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``file_fd`` from ``offset`` to the socket; raises
        :class:`TransferError` if the client goes away or stalls, or :class:`OSError`
        if the socket cannot be taken over (no descriptor left)."""
        worker = min(self._workers, key=len)
        await worker.send(sock_fd, file_fd, offset, count)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()


class _Worker:
    def __init__(self, number: int, stall_timeout: float) -> None:
        self._stall_timeout = stall_timeout
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._incoming: deque[_Transfer] = deque()
        self._active: set[_Transfer] = set()
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"sendfile-{number}", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._active) + len(self._incoming)

    async def send(self, sock_fd: int, file_fd: int, offset: int, count: int) -> None:
        if count <= 0:
            return
        if not self._running:
            raise TransferError("server shutting down")
        loop = asyncio.get_running_loop()
        transfer = _Transfer(os.dup(sock_fd), file_fd, offset, count, loop, loop.create_future())
        with self._lock:
            self._incoming.append(transfer)
        self._wake()
        try:
            await asyncio.shield(transfer.future)
        except asyncio.CancelledError:
            transfer.cancelled = True
            self._wake()
            raise

    def close(self) -> None:
        self._running = False
        self._wake()
        self._thread.join(timeout=5)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while self._running:
            try:
                events = self._selector.select(timeout=1.0)
            except OSError as exc:  # never seen; keep the thread, do not spin
                log.error("sendfile worker: select failed: %s", exc)
                time.sleep(0.1)
                continue
            for key, _ in events:
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._admit()
                else:
                    self._guarded(key.data, self._advance)
            for transfer in list(self._active):
                self._guarded(transfer, self._reap)
        for transfer in list(self._active) + list(self._incoming):
            self._finish(transfer, TransferError("server shutting down"))
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _guarded(self, transfer: _Transfer, step: Callable[[_Transfer], None]) -> None:
        """Run one step of one transfer; whatever it raises fails that transfer only."""
        try:
            step(transfer)
        except Exception as exc:  # any error fails that transfer, never the thread
            log.error("sendfile transfer failed: %s: %s", type(exc).__name__, exc)
            self._finish(transfer, TransferError(f"transfer failed: {exc}"))

    def _admit(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, deque()
        for transfer in incoming:
            self._guarded(transfer, self._start)

    def _start(self, transfer: _Transfer) -> None:
        self._active.add(transfer)
        self._selector.register(transfer.sock_fd, selectors.EVENT_WRITE, transfer)
        self._advance(transfer)

    def _advance(self, transfer: _Transfer) -> None:
        if transfer.finished:
            return
        if transfer.cancelled:
            self._finish(transfer, TransferError("cancelled"))
            return
        try:
            sent = os.sendfile(
                transfer.sock_fd,
                transfer.file_fd,
                transfer.offset,
                min(CHUNK, transfer.remaining),
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(transfer, TransferError(exc.strerror or str(exc)))
            return
        if sent == 0:
            self._finish(transfer, TransferError("file ended before the announced length"))
            return
        transfer.offset += sent
        transfer.remaining -= sent
        transfer.last_progress = time.monotonic()
        if transfer.remaining == 0:
            self._finish(transfer, None)

    def _reap(self, transfer: _Transfer) -> None:
        if transfer.cancelled:
            self._finish(transfer, TransferError("cancelled"))
        elif time.monotonic() - transfer.last_progress > self._stall_timeout:
            self._finish(transfer, TransferError("client stalled"))

    def _finish(self, transfer: _Transfer, error: Exception | None) -> None:
        if transfer.finished:
            return
        transfer.finished = True

        def resolve() -> None:
            if transfer.future.done():
                return
            if error is None or transfer.cancelled:
                transfer.future.set_result(None)
            else:
                transfer.future.set_exception(error)

        try:
            self._active.discard(transfer)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(transfer.sock_fd)
            os.close(transfer.sock_fd)
        finally:  # the waiting request is told whatever happens here
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                transfer.loop.call_soon_threadsafe(resolve)
