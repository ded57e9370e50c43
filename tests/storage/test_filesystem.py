"""FilesystemBlobStore: staged, verified, atomic commits on a real filesystem."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

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
