"""A fill serves what it received from memory, ahead of the disk, within bounds: past
them the download waits for the store, and nothing is committed before it is written."""

from __future__ import annotations

import asyncio
import os

from registry_mirror.mirror import Route, UpstreamEntry
from registry_mirror.mirror.fill import MAX_UNWRITTEN, BlobFill, WriteBudget
from registry_mirror.reference import Digest
from registry_mirror.storage import BlobInfo
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
