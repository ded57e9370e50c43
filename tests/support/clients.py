"""Helpers for the real-client tests (``tests/clients``): tools, registries.conf, a cutting proxy.

:class:`DroppingProxy` is a plain TCP proxy (asyncio, on its own loop in a thread) that can be
put between a client and the mirror.  It records the head of every HTTP request going through
it (request line and headers, per connection) and can drop the connection carrying the
response to a chosen request after exactly ``after`` bytes of that response's *body*::

    with DroppingProxy(mirror.port) as proxy:
        proxy.drop_once(rf"/blobs/{digest}", after=5 << 20)
        ...  # point the client at proxy.host
        assert proxy.requests(r"/blobs/")[1].headers.get("range") == f"bytes={5 << 20}-"

It understands just enough HTTP/1.1 for registry clients pulling: requests without bodies
(GET/HEAD) and no pipelining, i.e. a response follows the request sent before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import threading
from dataclasses import dataclass, field
from typing import Self

import pytest

from .service import Service

__all__ = [
    "DroppingProxy",
    "ProxiedRequest",
    "mirror_access_lines",
    "registries_conf",
    "require_tools",
]


def require_tools(*tools: str) -> dict[str, str]:
    """Paths of the tools; the test *fails* (never skips) naming what is missing."""
    found = {tool: shutil.which(tool) for tool in tools}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        pytest.fail(
            f"missing tools {missing}: install Debian's packages (`make deps`), CI has them",
            pytrace=False,
        )
    return {tool: path for tool, path in found.items() if path is not None}


def registries_conf(mirror_location: str, *, prefix: str = "docker.io") -> str:
    """A registries.conf (containers-registries.conf(5), v2 format) mirroring ``prefix``."""
    return (
        "[[registry]]\n"
        f'prefix = "{prefix}"\n'
        f'location = "{prefix}"\n'
        "[[registry.mirror]]\n"
        f'location = "{mirror_location}"\n'
        "insecure = true\n"
    )


_ACCESS_RE = re.compile(
    r'aiohttp\.access: \S+ \S+ "(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" '
)


def mirror_access_lines(log: str, under: str = "") -> list[tuple[str, str]]:
    """``(method, target)`` of every request line in the mirror's access log (target: path and
    query as sent); with ``under``, of those whose target starts with it."""
    return [
        (m["method"], m["target"])
        for m in _ACCESS_RE.finditer(log)
        if m["target"].startswith(under)
    ]


@dataclass(frozen=True)
class ProxiedRequest:
    connection: int  # connections are numbered from 1 in the order they were accepted
    method: str
    target: str  # path and query as sent
    headers: dict[str, str]  # lower-cased names; a repeated header keeps the last value


@dataclass
class _Drop:
    pattern: re.Pattern[str]
    after: int
    remaining: int
    dropped: list[ProxiedRequest] = field(default_factory=list)


class DroppingProxy(Service):
    """TCP proxy to ``127.0.0.1:target_port`` on ``127.0.0.1:<free port>`` (see module doc)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self._requests: list[ProxiedRequest] = []
        self._drops: list[_Drop] = []
        self._connections = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ control

    def drop_once(self, path_regex: str, *, after: int) -> _Drop:
        """Cut the connection answering the next request whose target matches (``re.search``)
        once ``after`` bytes of the response body have been passed on."""
        drop = _Drop(re.compile(path_regex), after, 1)
        with self._lock:
            self._drops.append(drop)
        return drop

    def requests(self, target_regex: str = "") -> list[ProxiedRequest]:
        pattern = re.compile(target_regex)
        with self._lock:
            return [r for r in self._requests if pattern.search(r.target)]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ the proxy

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._connections += 1
            conn_id = self._connections
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        armed: list[_Drop] = []  # the drop waiting for the response of the last request
        up = asyncio.create_task(self._upstream(conn_id, client_r, server_w, armed))
        down = asyncio.create_task(self._downstream(server_r, client_w, armed))
        try:
            _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if down not in pending:  # the response side ended (or was cut): end everything
                up.cancel()
            else:  # the client finished sending: let the answer flow until the server is done
                await down
            await asyncio.gather(up, down, return_exceptions=True)
        except asyncio.CancelledError:
            up.cancel()
            down.cancel()  # the proxy is stopping: close quietly
        finally:
            for writer in (client_w, server_w):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _upstream(
        self,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        armed: list[_Drop],
    ) -> None:
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                request = self._parse(conn_id, head)
                with self._lock:
                    self._requests.append(request)
                    for drop in self._drops:
                        if drop.remaining and drop.pattern.search(request.target):
                            drop.remaining -= 1
                            drop.dropped.append(request)
                            armed[:] = [drop]
                            break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    @staticmethod
    def _parse(conn_id: int, head: bytes) -> ProxiedRequest:
        lines = head.decode("latin-1").split("\r\n")
        method, target, *_ = [*lines[0].split(" "), "", ""]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return ProxiedRequest(conn_id, method, target, headers)

    async def _downstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, armed: list[_Drop]
    ) -> None:
        head = b""
        body = -1  # body bytes of the armed response passed on; -1: still in its headers
        while data := await reader.read(65536):
            if not armed:
                writer.write(data)
                await writer.drain()
                continue
            drop = armed[0]
            if body < 0:
                head += data
                if b"\r\n\r\n" not in head:
                    writer.write(data)
                    await writer.drain()
                    continue
                header_end = head.index(b"\r\n\r\n") + 4
                already = len(head) - len(data)  # header bytes passed on before this chunk
                body = 0
                writer.write(data[: header_end - already])
                data = data[header_end - already :]
            take = min(len(data), drop.after - body)
            writer.write(data[:take])
            await writer.drain()
            body += take
            if body >= drop.after:
                # Give the client time to read what it got, then end the connection (FIN).
                await asyncio.sleep(0.2)
                return
