"""The :class:`Upstream` protocol: :class:`RegistryClient` and the tests' in-memory
:class:`FakeUpstream` implement it (checked by mypy on the typed assignments below), and a
fake needs nothing of the HTTP client."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

import registry_mirror.upstream.base
import registry_mirror.upstream.errors
from registry_mirror.reference import Digest
from registry_mirror.upstream import RegistryClient, Upstream
from tests.support.fakes import FakeUpstream


def test_registry_client_is_an_upstream() -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            upstream: Upstream = RegistryClient("http://127.0.0.1:9/", session, name="up")
            assert upstream.url == "http://127.0.0.1:9"
            assert upstream.proxy_description() is None

    asyncio.run(scenario())


def test_a_fake_upstream_is_an_upstream() -> None:
    data = b"layer bytes"
    digest = Digest.of(data)

    async def scenario() -> bytes:
        fake = FakeUpstream()
        fake.put_blob("library/fake", data)
        upstream: Upstream = fake
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
