"""The mirror's application in this process, over the in-memory seams.

:func:`running_mirror` builds the app with :func:`registry_mirror.app.create_app` on a
:class:`MemoryBlobStore` (no local files: every cache hit is streamed from
:meth:`~MemoryBlobStore.open`), a :class:`MemoryIndex` and a router of
:class:`FakeUpstream` registries, serves it on a loopback port with aiohttp's test
server, and gives the test an HTTP client on it. Tests speak HTTP only; they look at the
store, the index and the upstreams' call counters to check what happened behind.
"""

from __future__ import annotations

import base64
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import bcrypt
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from registry_mirror.app import create_app
from registry_mirror.config import load_settings
from registry_mirror.mirror import Router, UpstreamEntry
from registry_mirror.reference import Digest
from tests.support.fakes import FakeUpstream, MemoryBlobStore, MemoryIndex
from tests.support.oci import oci_error_codes

__all__ = [
    "API_VERSION",
    "InProcessMirror",
    "ObservedStore",
    "StartMirror",
    "basic",
    "error_codes",
    "running_mirror",
    "write_htpasswd",
]

API_VERSION: Final = ("Docker-Distribution-API-Version", "registry/2.0")


class ObservedStore(MemoryBlobStore):
    """The memory store, recording every :meth:`open` (digest, start, end)."""

    def __init__(self) -> None:
        super().__init__(chunk_size=8192)
        self.opened: list[tuple[Digest, int, int | None]] = []

    def open(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self.opened.append((digest, start, end))
        return super().open(digest, start, end)


@dataclass
class InProcessMirror:
    client: TestClient[Any, Any]
    store: ObservedStore
    index: MemoryIndex
    router: Router

    def upstream(self, name: str | None = None) -> FakeUpstream:
        """The fake behind registry ``name`` (the default one if None)."""
        entry = self.router.default if name is None else self.router.entry(name)
        assert entry is not None and isinstance(entry.upstream, FakeUpstream)
        return entry.upstream


StartMirror = Callable[..., AbstractAsyncContextManager[InProcessMirror]]


@contextlib.asynccontextmanager
async def running_mirror(
    tmp_path: Path,
    *upstreams: FakeUpstream | UpstreamEntry,
    flags: Mapping[str, object] | None = None,
    store: ObservedStore | None = None,
) -> AsyncIterator[InProcessMirror]:
    """A started mirror of ``upstreams`` (a bare fake is Docker Hub, ``docker.io``; the
    first one is the default), with settings from ``flags``, in a fresh root of its own
    under ``tmp_path`` (on ``store`` if given: one prepared before the start); stopped
    (and every resource closed) on exit, when no download from a fake upstream may be
    left open."""
    entries = [
        UpstreamEntry("docker.io", up, dockerhub=True) if isinstance(up, FakeUpstream) else up
        for up in upstreams
    ]
    root = tempfile.mkdtemp(prefix="root-", dir=tmp_path)
    settings, _ = load_settings(
        flags={"storage.filesystem.rootdirectory": root, **(flags or {})}, environ={}
    )
    router = Router(entries, default=entries[0].name)
    store, index = store or ObservedStore(), MemoryIndex()
    app = create_app(settings, store=store, index=index, router=router)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield InProcessMirror(client, store, index, router)
    finally:
        await client.close()
    for entry in entries:
        if isinstance(entry.upstream, FakeUpstream):
            left = entry.upstream.open_streams
            assert left == 0, f"{entry.name}: {left} upstream downloads left open"


async def error_codes(response: ClientResponse) -> list[str]:
    """The codes of an OCI error answer (its shape checked by ``oci_error_codes``)."""
    return oci_error_codes(response.headers.get("Content-Type", ""), await response.read())


def write_htpasswd(path: Path, users: Mapping[str, str]) -> Path:
    """An htpasswd file of bcrypt entries (the cheapest cost: tests stay fast)."""
    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        for user, password in users.items()
    ]
    path.write_text("".join(lines))
    return path


def basic(user: str, password: str) -> dict[str, str]:
    """An ``Authorization`` header for Basic credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}
