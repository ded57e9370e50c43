"""A fill serves what it received from memory, ahead of the disk, within bounds: past
them the download waits for the store, and nothing is committed before it is written."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from registry_mirror.api.sendfile import SendfileReactor
from registry_mirror.app import create_app
from registry_mirror.config import load_settings
from registry_mirror.mirror import Route, Router, UpstreamEntry
from registry_mirror.mirror.fill import MAX_UNWRITTEN, BlobFill, WriteBudget
from registry_mirror.reference import Digest
from registry_mirror.storage import BlobInfo, FilesystemBlobStore
from tests.support.fakes import FakeUpstream, MemoryBlobStore
from tests.support.waits import wait_until_async

CHUNK = 64 * 1024


async def test_the_download_waits_for_a_lagging_disk_and_clients_are_served_ahead() -> None:
    data = os.urandom(3 * MAX_UNWRITTEN)
    upstream = FakeUpstream(chunk_size=CHUNK)
    digest = upstream.put_blob("library/big", data)
    store = MemoryBlobStore()
    upstream.hold = asyncio.Event()  # the download stops after its first chunk until set
    committed: list[BlobInfo] = []

    async def on_commit(route: Route, d: Digest, info: BlobInfo) -> None:
        committed.append(info)

    entry = UpstreamEntry("docker.io", upstream, dockerhub=True)
    budget = WriteBudget()
    fill = BlobFill(digest, Route(entry, "library/big"), store, on_commit, budget)
    task = fill.start()
    assert await fill.ready() == len(data)  # the first chunk is written before answering
    assert fill.written == CHUNK
    store.write_gate = asyncio.Event()  # from now on the disk takes bytes but is not done
    upstream.hold.set()
    got = bytearray()
    stream = fill.stream()
    # The client takes what was received, though none of it is written but the first chunk.
    async for chunk in stream:
        got += chunk
        if len(got) >= MAX_UNWRITTEN // 2:
            break
    assert fill.written == CHUNK
    # The download stops once MAX_UNWRITTEN is received and unwritten (one chunk more).
    await wait_until_async(lambda: fill.received - fill.written >= MAX_UNWRITTEN)
    await asyncio.sleep(0.1)
    assert fill.received - fill.written <= MAX_UNWRITTEN + CHUNK
    assert budget.used == fill.received - fill.written
    assert not task.done() and not committed
    store.write_gate.set()
    async for chunk in stream:
        got += chunk
    await task
    assert bytes(got) == data
    assert fill.written == fill.received == len(data)
    assert budget.used == 0
    assert [info.size for info in committed] == [len(data)]
    assert store.blobs[digest] == data
    assert upstream.open_streams == 0


async def test_a_follower_behind_the_download_gets_the_staged_bytes_by_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain TCP, a real store on disk: a client joining a fill that is megabytes in
    gets what is already in the staging file by sendfile from it, then follows the
    download; both get the whole blob, from one download."""
    data = os.urandom(8 * 1024 * 1024)
    upstream = FakeUpstream(chunk_size=CHUNK)
    upstream.chunk_delay = 0.003  # about 0.4 s for the whole download
    digest = upstream.put_blob("library/big", data)
    sent: list[tuple[int, int]] = []
    send = SendfileReactor.send

    async def recording(
        self: SendfileReactor, sock_fd: int, file_fd: int, offset: int, count: int
    ) -> None:
        sent.append((offset, count))
        await send(self, sock_fd, file_fd, offset, count)

    monkeypatch.setattr(SendfileReactor, "send", recording)
    root = tmp_path / "root"
    settings, _ = load_settings(flags={"storage.filesystem.rootdirectory": str(root)}, environ={})
    entry = UpstreamEntry("docker.io", upstream, dockerhub=True)
    store = FilesystemBlobStore(root)
    store.prepare()
    app = create_app(settings, store=store, router=Router([entry], default="docker.io"))
    path = f"/v2/library/big/blobs/{digest}"
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        first = asyncio.ensure_future((await client.get(path)).read())

        def staged_bytes() -> int:
            return sum(p.stat().st_size for p in (root / "staging").glob("*.part"))

        await wait_until_async(lambda: staged_bytes() >= 3 * 1024 * 1024)
        follower = await client.get(path)
        assert follower.status == 200
        assert await asyncio.wait_for(follower.read(), 20) == data
        assert await asyncio.wait_for(first, 20) == data
    assert sent and sent[0][0] == 0 and sent[0][1] >= 2 * 1024 * 1024, sent
    assert upstream.count("get_blob") == 1
    assert upstream.open_streams == 0
