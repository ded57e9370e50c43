"""A store with no local files works end to end: the real server application over the
in-memory store (cache hits streamed from ``store.open``, never sendfile), a real
upstream registry, a real client (skopeo)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from registry_mirror.app import create_app
from registry_mirror.config import load_settings
from registry_mirror.reference import Digest
from registry_mirror.storage import LocalFiles
from tests.mirror.test_pull_through import BLOB_GET, assert_same_image, skopeo_dir
from tests.support.fakes import MemoryBlobStore
from tests.support.images import push_image
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess


class CountingStore(MemoryBlobStore):
    """Counts the blobs streamed out of the store."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[Digest] = []

    def open(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self.opened.append(digest)
        return super().open(digest, start, end)


@pytest.fixture
def served(upstream: RegistryProcess, tmp_path: Path) -> Iterator[tuple[str, CountingStore]]:
    """The application on a loopback port in a thread of its own, listening when the test
    starts; a failed start fails the test with its own error."""
    settings, _ = load_settings(
        flags={"storage.filesystem.rootdirectory": str(tmp_path / "root")},
        environ={"REGISTRY_PROXY_REMOTEURL": upstream.url},
    )
    store = CountingStore()
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(settings, store=store))
    started = threading.Event()  # listening, or failed to start (then ``failed`` says why)
    failed: list[BaseException] = []
    stopped = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        except BaseException as error:
            failed.append(error)
        started.set()
        try:
            if not failed:
                loop.run_forever()
            loop.run_until_complete(runner.cleanup())
        finally:
            loop.close()
            stopped.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert started.wait(30), "the server neither listened nor failed in 30 s"
        if failed:
            raise failed[0]
        yield f"127.0.0.1:{port}", store
    finally:
        if not failed:  # else the loop never ran, and is closed
            loop.call_soon_threadsafe(loop.stop)
        assert stopped.wait(30)


def test_a_pull_through_a_store_without_local_files(
    served: tuple[str, CountingStore], upstream: RegistryProcess, tmp_path: Path
) -> None:
    host, store = served
    assert not isinstance(store, LocalFiles)
    image = push_image(upstream.url, "library/nofiles", "1", layers=[300_000, 1_500_000])
    upstream.clear_log()
    assert_same_image(skopeo_dir(host, "library/nofiles:1", tmp_path / "cold"), image)
    for digest in image.blobs:
        assert upstream.count("GET", rf"/blobs/{digest}$") == 1, digest
    assert {str(d) for d in store.blobs} >= set(image.blobs)

    upstream.clear_log()
    store.opened.clear()
    assert_same_image(skopeo_dir(host, "library/nofiles:1", tmp_path / "warm"), image)
    assert upstream.count("GET", BLOB_GET) == 0  # every blob a cache hit ...
    assert {str(d) for d in store.opened} >= set(image.blobs)  # ... streamed from the store
