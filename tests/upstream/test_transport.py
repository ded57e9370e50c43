"""The pools under the upstream client: the address a redirect is checked against is the
address connected to (no second DNS look-up to rebind), with real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import ClassVar

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from registry_mirror.reference import parse_digest
from registry_mirror.upstream import RegistryClient, Sessions, UpstreamProtocolError
from tests.support.faulty import FaultyProxy
from tests.support.images import push_image
from tests.support.registry import RegistryProcess


class ScriptedResolver(AbstractResolver):
    """Resolves every name to loopback and counts the look-ups, as a DNS server that
    rebinds a public-looking name to an internal address would."""

    calls: ClassVar[list[str]] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        ScriptedResolver.calls.append(host)
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("allow", [False, True])
def test_redirect_to_a_name_resolving_to_loopback(upstream: RegistryProcess, allow: bool) -> None:
    """Refused on the connection's own resolution (the CDN sees nothing) unless the upstream
    allows private addresses; then the same name reaches the CDN and the blob arrives."""
    image = push_image(upstream.url, "library/rebind", "1", layers=[5000])
    digest = image.layer_digests[0]
    ScriptedResolver.calls = []
    with FaultyProxy(upstream.url) as origin, FaultyProxy(upstream.url) as cdn:
        origin.redirect("GET", r"/blobs/", f"http://cdn.rebind.test:{cdn.port}{{path}}")

        async def scenario() -> bytes | Exception:
            sessions = Sessions.create("test", resolver=ScriptedResolver)
            try:
                client = RegistryClient(origin.url, sessions, allow_private_redirects=allow)
                try:
                    stream = await client.get_blob("library/rebind", parse_digest(digest))
                except UpstreamProtocolError as exc:
                    return exc
                try:
                    return b"".join([chunk async for chunk in stream.chunks()])
                finally:
                    stream.close()
            finally:
                await sessions.close()

        result = asyncio.run(scenario())
        assert ScriptedResolver.calls == ["cdn.rebind.test"]  # one look-up: the connection's
        if allow:
            assert result == image.blobs[digest]
            assert cdn.count("GET", r"/blobs/") == 1
        else:
            assert isinstance(result, UpstreamProtocolError), result
            assert "non-public address" in result.message
            assert cdn.requests() == []
