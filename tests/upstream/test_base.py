"""The :class:`Upstream` protocol: :class:`RegistryClient` implements it (checked by mypy
on the typed assignments below), and a fake needs nothing of the HTTP client."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

import registry_mirror.upstream.base
import registry_mirror.upstream.errors
from registry_mirror.reference import Digest, parse_digest
from registry_mirror.upstream import (
    BlobStream,
    ManifestInfo,
    RegistryClient,
    TagList,
    Upstream,
    UpstreamNotFound,
)


class MemoryBlob:
    def __init__(self, data: bytes, offset: int) -> None:
        self.size: int | None = len(data)
        self.offset = offset
        self._data = data[offset:]
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._data

    def close(self) -> None:
        self.closed = True


class MemoryUpstream:
    """An upstream of blobs in memory, written against ``upstream.base`` alone."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        self.blobs = blobs

    @property
    def url(self) -> str:
        return "memory://"

    def proxy_description(self) -> str | None:
        return None

    async def head_manifest(self, repo: str, reference: str) -> ManifestInfo:
        raise UpstreamNotFound(f"manifest {repo}:{reference}: not found upstream")

    async def get_manifest(self, repo: str, reference: str) -> tuple[ManifestInfo, bytes]:
        raise UpstreamNotFound(f"manifest {repo}:{reference}: not found upstream")

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        if digest not in self.blobs:
            raise UpstreamNotFound(f"blob {repo}@{digest}: not found upstream")
        return len(self.blobs[digest])

    async def get_blob(self, repo: str, digest: Digest, offset: int = 0) -> BlobStream:
        await self.head_blob(repo, digest)
        return MemoryBlob(self.blobs[digest], offset)

    async def list_tags(self, repo: str) -> TagList:
        return TagList()


def test_registry_client_is_an_upstream() -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            upstream: Upstream = RegistryClient("http://127.0.0.1:9/", session, name="up")
            assert upstream.url == "http://127.0.0.1:9"
            assert upstream.proxy_description() is None

    asyncio.run(scenario())


def test_a_fake_upstream_is_an_upstream() -> None:
    data = b"layer bytes"
    digest = parse_digest("sha256:" + hashlib.sha256(data).hexdigest())

    async def scenario() -> bytes:
        upstream: Upstream = MemoryUpstream({digest: data})
        assert await upstream.head_blob("library/fake", digest) == len(data)
        stream = await upstream.get_blob("library/fake", digest, 6)
        try:
            return b"".join([chunk async for chunk in stream.chunks()])
        finally:
            stream.close()

    assert asyncio.run(scenario()) == b"bytes"


def test_mypy_accepts_the_assignments_to_upstream() -> None:
    """The two typed assignments above are what says the classes are upstreams."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(Path(__file__).relative_to(root))],
        cwd=root,
        env={**os.environ, "MYPYPATH": str(root / "src")},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_protocol_and_errors_do_not_import_the_http_client() -> None:
    for module in (registry_mirror.upstream.base, registry_mirror.upstream.errors):
        assert module.__file__ is not None
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {
            name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name in (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
        }
        assert not imported & {"aiohttp", "yarl", "multidict"}, (module.__name__, imported)
