"""A fault-injecting reverse proxy to put between the mirror and a real upstream registry.

It runs an aiohttp server (and an aiohttp client towards the upstream) on its own event loop
in a background thread, so plain synchronous tests can drive it::

    with FaultyProxy(upstream.url) as proxy:
        mirror = mirror_factory(proxy.url)
        proxy.corrupt("GET", r"/blobs/sha256:", times=1)
        ...
        assert proxy.count("GET", r"/blobs/sha256:") == 1

Every request is recorded (:meth:`requests`: method, path, query, headers, time, status) and
forwarded to the upstream: method, path, query, headers (not ``Host`` nor hop-by-hop ones) and
body; the upstream's status, headers and body come back. The upstream's answer is read whole
before it is passed on (test blobs are a few MiB), which keeps the faults simple.

Faults are rules added at run time. A rule matches a method (``"GET"``, several as a tuple, or
``None`` for any) and a path regex (``re.search``), optionally only for the first ``times``
matching requests. The first rule that matches a request decides what happens to it:

* ``corrupt``: forward, but flip one byte of the body (same length).
* ``truncate(at_bytes)``: forward the headers (full ``Content-Length``) and ``at_bytes`` bytes
  of the body, pause so the client reads them, then close the connection.
* ``status(code, headers, body)``: answer directly, without asking the upstream.
* ``gate(at_bytes)``: send ``at_bytes`` bytes, then wait until the test calls
  :meth:`Fault.release` (``fault.reached`` is set while it waits), then send the rest.
* ``delay(seconds)``: wait, then forward normally.
* ``redirect(to_url)``: answer ``307`` with ``Location: to_url`` (``{path}`` in ``to_url`` is
  replaced by the request's path and query).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .service import Service

__all__ = ["Fault", "FaultyProxy", "Recorded"]

FaultKind = Literal["corrupt", "truncate", "status", "gate", "delay", "redirect"]
Methods = str | Iterable[str] | None

# Not forwarded: they describe one connection, not the message.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
GATE_MAX_WAIT = 30.0  # a gate never released aborts its response after this long


@dataclass(eq=False)
class Fault:
    """One rule. ``hits`` counts the requests it handled."""

    kind: FaultKind
    methods: frozenset[str] | None
    path: re.Pattern[str]
    times: int | None = None  # None: every matching request
    at_bytes: int = 0  # truncate, gate
    pause: float = 0.2  # truncate: time for the client to read the bytes before the close
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0  # delay
    to_url: str = ""  # redirect
    hits: int = 0
    reached: threading.Event = field(default_factory=threading.Event)  # gate: bytes sent
    released: threading.Event = field(default_factory=threading.Event)  # gate: go on

    def release(self) -> None:
        """Open the gate (for every request held at it, now and later)."""
        self.released.set()

    def wait_reached(self, timeout: float = 10.0) -> None:
        """Wait until a request is held at the gate; AssertionError if none is."""
        if not self.reached.wait(timeout):
            raise AssertionError(f"no request reached the gate {self.path.pattern} in {timeout}s")

    def _take(self, method: str, path: str) -> bool:
        """Does this rule handle the request? Counts it if so (call under the proxy's lock)."""
        if self.methods is not None and method not in self.methods:
            return False
        if not self.path.search(path):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


@dataclass
class Recorded:
    """A request as the proxy received it."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    time: float  # time.monotonic() on arrival
    fault: FaultKind | None = None
    status: int | None = None  # what the proxy answered (None until it answers)


class FaultyProxy(Service):
    """A reverse proxy to ``upstream_url`` on ``127.0.0.1:<free port>``; see the module doc.

    :meth:`stop` and :meth:`start` again keep the port, so an upstream outage is a
    ``stop()`` and its end a ``start()``.
    """

    def __init__(self, upstream_url: str, port: int = 0) -> None:
        self.upstream = upstream_url.rstrip("/")
        self.port = port
        self._faults: list[Fault] = []
        self._log: list[Recorded] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="faulty-proxy", daemon=True)
        self._thread.start()
        self._loop = loop
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(10)
        except BaseException:
            self.stop()
            raise
        return self

    async def _serve(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=60),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        """Stop listening and drop every connection (gates are released first)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with self._lock:
            for fault in self._faults:
                fault.release()
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ faults

    def add(
        self,
        kind: FaultKind,
        method: Methods,
        path: str,
        times: int | None = None,
        **params: object,
    ) -> Fault:
        if isinstance(method, str):
            methods: frozenset[str] | None = frozenset({method.upper()})
        else:
            methods = None if method is None else frozenset(m.upper() for m in method)
        fault = Fault(kind, methods, re.compile(path), times, **params)  # type: ignore[arg-type]
        with self._lock:
            self._faults.append(fault)
        return fault

    def corrupt(self, method: Methods, path: str, *, times: int | None = None) -> Fault:
        return self.add("corrupt", method, path, times)

    def truncate(
        self,
        method: Methods,
        path: str,
        at_bytes: int,
        *,
        times: int | None = None,
        pause: float = 0.2,
    ) -> Fault:
        return self.add("truncate", method, path, times, at_bytes=at_bytes, pause=pause)

    def status(
        self,
        method: Methods,
        path: str,
        code: int,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        times: int | None = None,
    ) -> Fault:
        return self.add(
            "status", method, path, times, status=code, headers=dict(headers or {}), body=body
        )

    def gate(self, method: Methods, path: str, at_bytes: int, *, times: int | None = None) -> Fault:
        return self.add("gate", method, path, times, at_bytes=at_bytes)

    def delay(
        self, method: Methods, path: str, seconds: float, *, times: int | None = None
    ) -> Fault:
        return self.add("delay", method, path, times, seconds=seconds)

    def redirect(
        self, method: Methods, path: str, to_url: str, *, times: int | None = None
    ) -> Fault:
        return self.add("redirect", method, path, times, to_url=to_url)

    def remove(self, fault: Fault) -> None:
        fault.release()
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear_faults(self) -> None:
        with self._lock:
            faults, self._faults = self._faults, []
        for fault in faults:
            fault.release()

    # ------------------------------------------------------------------ the log

    def requests(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """Requests received since start / :meth:`clear_log`, oldest first, optionally only
        those with this method and a path matching this regex (``re.search``)."""
        with self._lock:
            log = list(self._log)
        return [
            r
            for r in log
            if (method is None or r.method == method) and (path is None or re.search(path, r.path))
        ]

    def count(self, method: str | None, path: str) -> int:
        return len(self.requests(method, path))

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # ------------------------------------------------------------------ the proxy

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = Recorded(
            request.method,
            request.path,
            request.query_string,
            CIMultiDictProxy(CIMultiDict(request.headers)),
            time.monotonic(),
        )
        with self._lock:
            fault = next((f for f in self._faults if f._take(request.method, request.path)), None)
            record.fault = fault.kind if fault else None
            self._log.append(record)

        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        if fault is not None and fault.kind == "status":
            record.status = fault.status
            return web.Response(status=fault.status, headers=fault.headers, body=fault.body)
        if fault is not None and fault.kind == "redirect":
            record.status = 307
            location = fault.to_url.replace("{path}", request.path_qs)
            return web.Response(status=307, headers={"Location": location})

        status, headers, content = await self._forward(request, body)
        record.status = status
        if fault is not None and fault.kind == "corrupt" and content:
            flipped = bytearray(content)
            flipped[len(flipped) // 2] ^= 0xFF
            content = bytes(flipped)
        response = web.StreamResponse(status=status, headers=headers)
        with contextlib.suppress(ConnectionError):  # the client went away or gave up waiting
            await self._send(request, response, fault, content)
        return response

    async def _send(
        self,
        request: web.Request,
        response: web.StreamResponse,
        fault: Fault | None,
        content: bytes,
    ) -> None:
        await response.prepare(request)
        if request.method == "HEAD" or not content:
            await response.write_eof()
            return

        if fault is not None and fault.kind == "truncate":
            await response.write(content[: fault.at_bytes])
            await self._drain(request)
            await asyncio.sleep(fault.pause)  # let the client read them: then cut
            _close(request)
            return
        if fault is not None and fault.kind == "gate":
            await response.write(content[: fault.at_bytes])
            await self._drain(request)
            content = content[fault.at_bytes :]
            fault.reached.set()
            deadline = time.monotonic() + GATE_MAX_WAIT
            while not fault.released.is_set():
                if time.monotonic() > deadline:
                    _close(request)
                    return
                await asyncio.sleep(0.005)
        await response.write(content)
        await response.write_eof()

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, CIMultiDict[str], bytes]:
        assert self._session is not None
        headers = CIMultiDict(
            (k, v)
            for k, v in request.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() not in ("host", "content-length")
        )
        url = URL(self.upstream + request.raw_path, encoded=True)
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                content = await upstream.read()
                out = CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                )
                return upstream.status, out, content
        except (aiohttp.ClientError, TimeoutError) as exc:
            message = f"faulty proxy: upstream failed: {exc}".encode()
            return 502, CIMultiDict({"Content-Length": str(len(message))}), message

    @staticmethod
    async def _drain(request: web.Request) -> None:
        """Wait (bounded) until what was written left the process."""
        transport = request.transport
        for _ in range(1000):
            if transport is None or transport.is_closing():
                return
            if not transport.get_write_buffer_size():
                return
            await asyncio.sleep(0.005)


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
