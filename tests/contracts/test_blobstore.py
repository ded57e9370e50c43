"""The BlobStore core contract, run against every store (see ``conftest.py``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from registry_mirror.reference import Digest
from registry_mirror.storage import (
    BlobInfo,
    DigestMismatch,
    LocalFile,
    LocalFiles,
    Redirect,
    StorageError,
    Stream,
)
from tests.contracts.conftest import CAPABILITY_PROTOCOLS, StoreHarness

DATA = os.urandom(50_000)  # several chunks of every store's reads
DIGEST = Digest.of(DATA)


async def put(store: Any, data: bytes, digest: Digest | None = None) -> BlobInfo:
    staged = await store.begin_write()
    for start in range(0, len(data), 7_000):
        await staged.write(data[start : start + 7_000])
    info: BlobInfo = await staged.commit(digest or Digest.of(data), len(data))
    return info


async def body(store: Any, digest: Digest, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.open(digest, start, end)])


def test_declared_capabilities_are_the_protocols_it_implements(blob_store: StoreHarness) -> None:
    for capability, protocol in CAPABILITY_PROTOCOLS.items():
        has = isinstance(blob_store.store, protocol)
        assert has == (capability in blob_store.capabilities), capability


async def test_delivery_says_how_a_committed_blob_leaves(blob_store: StoreHarness) -> None:
    store = blob_store.store
    await put(store, DATA)
    delivery = await store.delivery(DIGEST)
    assert isinstance(delivery, LocalFile | Stream | Redirect)
    if isinstance(delivery, LocalFile):  # only a store with local files says so
        assert isinstance(blob_store.store, LocalFiles)
        fd = await delivery.open()
        try:
            assert os.pread(fd, len(DATA) + 1, 0) == DATA
        finally:
            os.close(fd)
        await store.delete(DIGEST)
        with pytest.raises(FileNotFoundError):
            await delivery.open()


async def test_commit_makes_the_blob_visible(blob_store: StoreHarness) -> None:
    store = blob_store.store
    staged = await store.begin_write()
    await staged.write(DATA[:1000])
    await staged.write(DATA[1000:])
    assert staged.written == len(DATA)
    assert await store.stat(DIGEST) is None  # nothing published before the commit
    assert await store.read_all(DIGEST, 1 << 20) is None
    info = await staged.commit(DIGEST, len(DATA))
    assert (info.digest, info.size) == (DIGEST, len(DATA))
    stat = await store.stat(DIGEST)
    assert stat is not None and (stat.digest, stat.size) == (DIGEST, len(DATA))
    assert await body(store, DIGEST) == DATA
    assert await store.read_all(DIGEST, len(DATA)) == DATA
    assert await store.verify(DIGEST) == (True, len(DATA))


async def test_commit_without_a_size_checks_the_digest_only(blob_store: StoreHarness) -> None:
    staged = await blob_store.store.begin_write()
    await staged.write(DATA)
    assert (await staged.commit(DIGEST)).size == len(DATA)
    assert await body(blob_store.store, DIGEST) == DATA


async def test_sha512_digests(blob_store: StoreHarness) -> None:
    digest = Digest.of(DATA, "sha512")
    assert (await put(blob_store.store, DATA, digest)).size == len(DATA)
    assert await body(blob_store.store, digest) == DATA
    assert await blob_store.store.verify(digest) == (True, len(DATA))
    with pytest.raises(DigestMismatch):
        await put(blob_store.store, DATA[1:], Digest.of(DATA[:-1], "sha512"))


@pytest.mark.parametrize("fault", ["other bytes", "short", "wrong size", "other digest"])
async def test_a_mismatch_publishes_nothing(blob_store: StoreHarness, fault: str) -> None:
    store = blob_store.store
    staged = await store.begin_write()
    size: int | None = len(DATA)
    expected = DIGEST
    if fault == "other bytes":
        await staged.write(DATA[:-1] + bytes([DATA[-1] ^ 1]))
    elif fault == "short":
        await staged.write(DATA[:5000])
    elif fault == "wrong size":
        await staged.write(DATA)
        size = len(DATA) + 1
    else:
        await staged.write(DATA)
        expected = Digest.of(b"something else")
    with pytest.raises(DigestMismatch) as raised:
        await staged.commit(expected, size)
    assert raised.value.expected == expected
    assert isinstance(raised.value, StorageError)
    assert await store.stat(expected) is None
    assert await store.stat(DIGEST) is None
    assert [d async for d in store.iter_digests()] == []
    await staged.abort()  # harmless after a failed commit
    with pytest.raises(StorageError):
        await staged.commit(DIGEST, len(DATA))  # it was discarded: nothing left to commit


async def test_abort_discards_and_is_safe_twice_and_after_commit(
    blob_store: StoreHarness,
) -> None:
    store = blob_store.store
    staged = await store.begin_write()
    await staged.write(DATA)
    await staged.abort()
    await staged.abort()
    assert await store.stat(DIGEST) is None
    with pytest.raises(StorageError):
        await staged.write(b"more")
    with pytest.raises(StorageError):
        await staged.commit(DIGEST, len(DATA))

    committed = await store.begin_write()
    await committed.write(DATA)
    await committed.commit(DIGEST, len(DATA))
    await committed.abort()  # after a commit: changes nothing
    assert await body(store, DIGEST) == DATA
    with pytest.raises(StorageError):
        await committed.write(b"more")


async def test_a_reader_follows_the_write_and_outlives_the_commit(
    blob_store: StoreHarness,
) -> None:
    staged = await blob_store.store.begin_write()
    reader = staged.reader()
    assert await reader.read(0, 100) == b""
    await staged.write(DATA[:1000])
    assert await reader.read(0, 5000) == DATA[:1000]  # what is written so far
    assert await reader.read(990, 100) == DATA[990:1000]
    assert await reader.read(1000, 100) == b""
    late = staged.reader()  # a follower that comes later sees it all too
    await staged.write(DATA[1000:])
    assert await reader.read(1000, 10) == DATA[1000:1010]
    await staged.commit(DIGEST, len(DATA))
    assert await reader.read(len(DATA) - 10, 100) == DATA[-10:]  # valid after commit
    assert await late.read(0, len(DATA)) == DATA
    reader.close()
    late.close()
    reader.close()  # twice: harmless
    with pytest.raises(StorageError):
        await reader.read(0, 1)


async def test_a_reader_outlives_an_abort(blob_store: StoreHarness) -> None:
    staged = await blob_store.store.begin_write()
    await staged.write(DATA[:2000])
    reader = staged.reader()
    await staged.abort()
    assert await reader.read(0, 2000) == DATA[:2000]  # valid until closed
    reader.close()
    with pytest.raises(StorageError):
        staged.reader()  # nothing left to follow


async def test_a_reader_after_a_commit_fails_or_reads_the_blob(
    blob_store: StoreHarness,
) -> None:
    """A follower that comes after the commit is told (StorageError, then it opens the
    committed blob instead) or reads the whole blob."""
    staged = await blob_store.store.begin_write()
    await staged.write(DATA)
    await staged.commit(DIGEST, len(DATA))
    try:
        reader = staged.reader()
    except StorageError:
        return
    assert await reader.read(0, len(DATA)) == DATA
    reader.close()


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, len(DATA)),
        (0, 1),
        (10, 20),
        (4095, 4097),  # across a chunk
        (1, len(DATA) - 1),
        (len(DATA) - 1, None),
        (len(DATA) - 100, len(DATA) + 100),  # past the end: what there is
        (100, 100),  # empty range
        (len(DATA), None),  # at the end
        (len(DATA), len(DATA)),
    ],
)
async def test_open_ranges(blob_store: StoreHarness, start: int, end: int | None) -> None:
    await put(blob_store.store, DATA)
    chunks = [chunk async for chunk in blob_store.store.open(DIGEST, start, end)]
    assert b"".join(chunks) == DATA[start:end]
    assert all(chunks)  # no empty chunks


async def test_open_streams_in_chunks(blob_store: StoreHarness) -> None:
    data = os.urandom(3 << 20)
    await put(blob_store.store, data)
    chunks = [chunk async for chunk in blob_store.store.open(Digest.of(data))]
    assert len(chunks) > 1
    assert b"".join(chunks) == data


async def test_open_of_an_absent_blob_raises(blob_store: StoreHarness) -> None:
    with pytest.raises(StorageError):
        await body(blob_store.store, DIGEST)


async def test_read_all_with_a_limit(blob_store: StoreHarness) -> None:
    store = blob_store.store
    assert await store.read_all(DIGEST, 1 << 20) is None
    await put(store, DATA)
    assert await store.read_all(DIGEST, len(DATA)) == DATA  # exactly the limit
    assert await store.read_all(DIGEST, len(DATA) + 1) == DATA
    with pytest.raises(StorageError):
        await store.read_all(DIGEST, len(DATA) - 1)


async def test_verify_detects_corruption(blob_store: StoreHarness) -> None:
    store = blob_store.store
    await put(store, DATA)
    seen: list[int] = []
    assert await store.verify(DIGEST, seen.append) == (True, len(DATA))
    assert sum(seen) == len(DATA)
    blob_store.corrupt(DIGEST)
    assert await store.verify(DIGEST) == (False, len(DATA))
    assert await store.verify(Digest.of(b"absent")) == (False, 0)


async def test_delete(blob_store: StoreHarness) -> None:
    store = blob_store.store
    await put(store, DATA)
    assert await store.delete(DIGEST) is True
    assert await store.delete(DIGEST) is False
    assert await store.stat(DIGEST) is None
    assert await store.read_all(DIGEST, 1 << 20) is None
    assert [d async for d in store.iter_digests()] == []
    await put(store, DATA)  # and it can come back
    assert await body(store, DIGEST) == DATA


async def test_iter_digests_lists_exactly_the_committed_blobs(blob_store: StoreHarness) -> None:
    store = blob_store.store
    assert [d async for d in store.iter_digests()] == []
    blobs = [os.urandom(100 + n) for n in range(5)]
    for data in blobs:
        await put(store, data)
    pending = await store.begin_write()  # neither a write in progress
    await pending.write(b"in progress")
    failed = await store.begin_write()  # nor a failed one
    await failed.write(b"bad")
    with pytest.raises(DigestMismatch):
        await failed.commit(Digest.of(b"good"))
    await store.delete(Digest.of(blobs[0]))
    found = [d async for d in store.iter_digests()]
    assert sorted(map(str, found)) == sorted(str(Digest.of(d)) for d in blobs[1:])
    assert len(found) == len(set(found))
    await pending.abort()


async def test_two_writers_of_the_same_content_both_commit(blob_store: StoreHarness) -> None:
    store = blob_store.store
    data = os.urandom(300_000)
    digest = Digest.of(data)
    first, second = await store.begin_write(), await store.begin_write()

    async def write(staged: Any) -> BlobInfo:
        for start in range(0, len(data), 30_000):
            await staged.write(data[start : start + 30_000])
            await asyncio.sleep(0)
        info: BlobInfo = await staged.commit(digest, len(data))
        return info

    infos = await asyncio.gather(write(first), write(second))
    assert [info.size for info in infos] == [len(data), len(data)]
    assert await body(store, digest) == data
    assert await store.verify(digest) == (True, len(data))
    assert [d async for d in store.iter_digests()] == [digest]


async def test_committing_content_that_exists_is_fine(blob_store: StoreHarness) -> None:
    store = blob_store.store
    await put(store, DATA)
    reading = store.open(DIGEST)
    first = await reading.__anext__()  # a reader of the existing blob, mid-way
    assert (await put(store, DATA)).size == len(DATA)
    rest = b"".join([chunk async for chunk in reading])
    assert first + rest == DATA
    assert await body(store, DIGEST) == DATA
    assert [d async for d in store.iter_digests()] == [DIGEST]


async def test_the_empty_blob(blob_store: StoreHarness) -> None:
    store = blob_store.store
    empty = Digest.of(b"")
    staged = await store.begin_write()
    info = await staged.commit(empty, 0)
    assert (info.digest, info.size) == (empty, 0)
    stat = await store.stat(empty)
    assert stat is not None and stat.size == 0
    assert [chunk async for chunk in store.open(empty)] == []
    assert await store.read_all(empty, 0) == b""
    assert await store.verify(empty) == (True, 0)
    assert [d async for d in store.iter_digests()] == [empty]
    assert await store.delete(empty)


async def test_writes_in_progress_are_independent(blob_store: StoreHarness) -> None:
    store = blob_store.store
    a, b = await store.begin_write(), await store.begin_write()
    await a.write(b"a" * 100)
    await b.write(b"b" * 50)
    assert (a.written, b.written) == (100, 50)
    await b.abort()
    await a.commit(Digest.of(b"a" * 100), 100)
    assert await store.read_all(Digest.of(b"a" * 100), 100) == b"a" * 100
    assert await store.stat(Digest.of(b"b" * 50)) is None


async def test_a_closed_store_says_so(blob_store: StoreHarness) -> None:
    store = blob_store.store
    await put(store, DATA)
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await store.stat(DIGEST)
    with pytest.raises(StorageError):
        await store.begin_write()
    with pytest.raises(StorageError):
        await store.read_all(DIGEST, 1 << 20)
    with pytest.raises(StorageError):
        await body(store, DIGEST)
    await store.close()  # twice: harmless


async def test_commit_tells_the_verdict_before_it_returns(blob_store: StoreHarness) -> None:
    """``verified`` is called once the content matches (a client may be answered then),
    before the blob is published; never for content that does not match."""
    store = blob_store.store
    calls: list[str] = []  # each call: whether the blob was published already
    staged = await store.begin_write()
    await staged.write(DATA)

    def verified() -> None:
        calls.append("published" if blob_store.visible(DIGEST) else "not yet")

    info = await staged.commit(DIGEST, len(DATA), verified=verified)
    assert calls == ["not yet"] and info.size == len(DATA)
    assert blob_store.visible(DIGEST)
    assert await store.read_all(DIGEST, len(DATA)) == DATA

    other = await store.begin_write()
    await other.write(DATA[:-1])
    with pytest.raises(DigestMismatch):
        await other.commit(DIGEST, len(DATA), verified=lambda: calls.append("mismatch"))
    assert calls == ["not yet"]


async def test_overlapping_writes_land_in_call_order(blob_store: StoreHarness) -> None:
    """A fill queues its batches without waiting for each: they are applied (and
    hashed) in the order of the calls, several pieces per call, whichever finishes first."""
    store = blob_store.store
    staged = await store.begin_write()
    batches = [
        [DATA[start : start + 3_000], DATA[start + 3_000 : start + 10_000]]
        for start in range(0, len(DATA), 10_000)
    ]
    writes = [asyncio.ensure_future(staged.write(*pieces)) for pieces in batches]
    await asyncio.gather(*writes)
    assert staged.written == len(DATA)
    reader = staged.reader()
    try:
        assert await reader.read(0, len(DATA) + 1) == DATA
    finally:
        reader.close()
    assert (await staged.commit(DIGEST, len(DATA))).size == len(DATA)
    assert await body(store, DIGEST) == DATA


async def test_a_write_whose_caller_is_cancelled_still_lands(blob_store: StoreHarness) -> None:
    """A caller cancelled mid-write (a fill being stopped) does not tear the batch: it
    is written whole or the staged blob fails; an abort then leaves nothing behind."""
    store = blob_store.store
    staged = await store.begin_write()
    write = asyncio.ensure_future(staged.write(DATA[:20_000], DATA[20_000:]))
    await asyncio.sleep(0)
    write.cancel()
    await asyncio.gather(write, return_exceptions=True)
    assert (await staged.commit(DIGEST, len(DATA))).size == len(DATA)
    assert await body(store, DIGEST) == DATA
