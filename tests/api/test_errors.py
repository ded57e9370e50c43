"""The error boundary: a failure after the response headers went out cuts the connection.

A real aiohttp server with the mirror's error middleware on loopback and a raw socket as
the client, so what is on the wire is seen byte for byte.
"""

from __future__ import annotations

import asyncio
import socket
import time

from aiohttp import web

from registry_mirror.api.errors import error_middleware
from registry_mirror.storage import StorageError

BODY_START = b"x" * 10


async def _fails_after_headers(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = 1000
    await response.prepare(request)
    await response.write(BODY_START)
    raise StorageError("the disk went away mid-response")


async def _fails_before_headers(request: web.Request) -> web.StreamResponse:
    raise StorageError("the disk went away")


def _exchange(port: int, path: str) -> tuple[bytes, float]:
    """Send one keep-alive request; everything received until the server closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            if path == "/before" and b"\r\n\r\n" in received:
                head, _, body = received.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    return received, time.monotonic() - started


def test_an_error_after_the_headers_cuts_the_connection() -> None:
    async def scenario() -> None:
        app = web.Application(middlewares=[error_middleware])
        app.router.add_get("/after", _fails_after_headers)
        app.router.add_get("/before", _fails_before_headers)
        runner = web.AppRunner(app, keepalive_timeout=60)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            received, took = await asyncio.to_thread(_exchange, port, "/after")
            # One response, cut short: no second status line in its body, and closed at
            # once rather than when the keep-alive timeout (60 s) runs out.
            assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received[:200]
            assert received.count(b"HTTP/1.1") == 1, received
            assert received.endswith(b"\r\n\r\n" + BODY_START), received
            assert took < 10
            # Before the headers, the failure is still an OCI error answer.
            before, _ = await asyncio.to_thread(_exchange, port, "/before")
            assert before.startswith(b"HTTP/1.1 503"), before[:200]
            assert b'"UNAVAILABLE"' in before
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
