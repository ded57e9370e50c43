"""FilesystemBlobStore: staged, verified, atomic commits on a real filesystem."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from registry_mirror.index import SQLiteIndex
from registry_mirror.reference import Digest
from registry_mirror.storage import DigestMismatch, FilesystemBlobStore


def store_at(tmp_path: Path) -> FilesystemBlobStore:
    store = FilesystemBlobStore(tmp_path / "root")
    store.prepare()
    return store


def test_commit_publishes_only_verified_content(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = store_at(tmp_path)
        data = os.urandom(300_000)
        digest = Digest.of(data)
        staged = await store.begin_write()
        await staged.write(data[:1000])
        reader = staged.reader()
        assert await reader.read(0, 5000) == data[:1000]  # followers see what is written
        assert await store.stat(digest) is None  # but nothing is published yet
        await staged.write(data[1000:])
        info = await staged.commit(digest, len(data))
        assert info.size == len(data)
        assert await reader.read(len(data) - 10, 10) == data[-10:]  # valid after the rename
        reader.close()
        assert (await store.stat(digest)) is not None
        assert store.path_for(digest).read_bytes() == data
        assert store.path_for(digest) == (
            tmp_path / "root" / "blobs" / "sha256" / digest.hex[:2] / digest.hex
        )
        assert list((tmp_path / "root" / "staging").iterdir()) == []
        chunks = [c async for c in store.open(digest, 10, 20)]
        assert b"".join(chunks) == data[10:20]
        assert [d async for d in store.iter_digests()] == [digest]
        assert await store.read_all(digest, 1 << 20) == data
        assert await store.delete(digest)
        assert await store.stat(digest) is None

    asyncio.run(scenario())


@pytest.mark.parametrize("fault", ["wrong-bytes", "short", "wrong-size"])
def test_mismatch_discards_everything(tmp_path: Path, fault: str) -> None:
    async def scenario() -> None:
        store = store_at(tmp_path)
        data = os.urandom(10_000)
        digest = Digest.of(data)
        staged = await store.begin_write()
        if fault == "wrong-bytes":
            await staged.write(data[:-1] + bytes([data[-1] ^ 1]))
            size: int | None = len(data)
        elif fault == "short":
            await staged.write(data[:5000])
            size = len(data)
        else:
            await staged.write(data)
            size = len(data) + 1
        with pytest.raises(DigestMismatch):
            await staged.commit(digest, size)
        assert await store.stat(digest) is None
        assert list((tmp_path / "root" / "staging").iterdir()) == []
        await staged.abort()  # harmless after a failed commit

    asyncio.run(scenario())


def test_abort_and_clean_staging(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = store_at(tmp_path)
        staged = await store.begin_write()
        await staged.write(b"partial")
        await staged.abort()
        assert list((tmp_path / "root" / "staging").iterdir()) == []
        (tmp_path / "root" / "staging" / "crash.part").write_bytes(b"x")
        assert await store.clean_staging() == 1

    asyncio.run(scenario())


def test_sha512_digests_are_verified(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = store_at(tmp_path)
        data = b"sha512 content"
        digest = Digest.of(data, "sha512")
        staged = await store.begin_write()
        await staged.write(data)
        await staged.commit(digest, len(data))
        assert store.path_for(digest).read_bytes() == data

    asyncio.run(scenario())


def test_a_slow_disk_does_not_delay_hits_followers_the_index_or_other_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync on a busy disk can take seconds. Many fills committing at once then hold
    every thread the store writes with; cache-hit stats and reads, followers' reads of a
    fill in progress, the index and everything else that runs in a thread (password
    checks) go on. The disk's fsync is the one thing made slow here: it waits for the
    test, bounded, before doing the real one."""
    disk_ready = threading.Event()
    in_fsync = 0
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        nonlocal in_fsync
        in_fsync += 1
        disk_ready.wait(20)
        real_fsync(fd)

    async def scenario() -> None:
        store = store_at(tmp_path)
        index = SQLiteIndex(tmp_path / "index.db")
        await index.open()
        hit = os.urandom(100_000)
        staged = await store.begin_write()
        await staged.write(hit)
        await staged.commit(Digest.of(hit))
        await index.put_blob("r/a", Digest.of(hit), len(hit))
        monkeypatch.setattr(os, "fsync", slow_fsync)

        async def fill(n: int) -> None:
            data = n.to_bytes(4, "big") * 1000
            staged = await store.begin_write()
            await staged.write(data)
            await staged.commit(Digest.of(data))

        follower = await store.begin_write()
        await follower.write(b"follow me")
        fills = [asyncio.create_task(fill(n)) for n in range(16)]
        try:
            for _ in range(200):
                if in_fsync >= 4:
                    break
                await asyncio.sleep(0.01)
            assert in_fsync >= 4, "the fills did not reach the disk"
            started = time.monotonic()
            assert await asyncio.wait_for(store.stat(Digest.of(hit)), 5) is not None
            body = b"".join([c async for c in store.open(Digest.of(hit))])
            assert body == hit
            reader = follower.reader()
            assert await asyncio.wait_for(reader.read(0, 100), 5) == b"follow me"
            reader.close()
            assert await asyncio.wait_for(index.get_tag("r/a", "1"), 5) is None
            assert await asyncio.wait_for(asyncio.to_thread(lambda: "checked"), 5) == "checked"
            assert time.monotonic() - started < 2
            assert not any(task.done() for task in fills)  # the disk is still slow
        finally:
            disk_ready.set()
            await asyncio.gather(*fills)
            await follower.abort()
        await index.close()
        await store.close()
        assert len([p for p in store.blobs_dir.rglob("*") if p.is_file()]) == 17

    asyncio.run(scenario())
