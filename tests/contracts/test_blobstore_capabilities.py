"""The BlobStore's optional capabilities, run against the stores that declare them:
local files (sendfile), capacity, staging clean-up."""

from __future__ import annotations

import os

import pytest

from registry_mirror.reference import Digest
from tests.contracts.conftest import StoreHarness
from tests.contracts.test_blobstore import DATA, DIGEST, put


async def test_local_files(local_store: StoreHarness) -> None:
    store = local_store.store
    await put(store, DATA)
    fd = await store.open_local(DIGEST)
    try:
        assert os.pread(fd, len(DATA) + 1, 0) == DATA
    finally:
        os.close(fd)
    await store.delete(DIGEST)
    with pytest.raises(FileNotFoundError):
        await store.open_local(DIGEST)


async def test_a_local_descriptor_outlives_a_delete(local_store: StoreHarness) -> None:
    store = local_store.store
    await put(store, DATA)
    fd = await store.open_local(DIGEST)
    try:
        await store.delete(DIGEST)
        assert os.pread(fd, 10, 0) == DATA[:10]
    finally:
        os.close(fd)


async def test_capacity(sized_store: StoreHarness) -> None:
    store = sized_store.store
    assert await store.disk_usage() == 0
    await put(store, DATA)
    other = os.urandom(10_000)
    await put(store, other)
    sizes = await store.disk_sizes([DIGEST, Digest.of(other), Digest.of(b"absent")])
    assert set(sizes) == {DIGEST, Digest.of(other)}  # absent ones left out
    assert sizes[DIGEST] >= len(DATA)
    assert await store.disk_usage() == sum(sizes.values())
    free = await store.free_space()
    assert free is None or free > 0
    await store.delete(DIGEST)
    assert await store.disk_usage() == sizes[Digest.of(other)]
    assert await store.disk_sizes([]) == {}


async def test_allocated_is_what_a_committed_blob_takes_on_disk(sized_store: StoreHarness) -> None:
    store = sized_store.store
    for data in (DATA, b"", b"x", os.urandom(3 * 4096 + 1)):
        info = await put(store, data)
        on_disk = (await store.disk_sizes([info.digest]))[info.digest]
        assert store.allocated(info.size) == on_disk, len(data)


async def test_clean_staging_removes_leftovers(staging_store: StoreHarness) -> None:
    store = staging_store.store
    await put(store, DATA)
    leftovers = [await store.begin_write() for _ in range(2)]  # never committed nor aborted
    for staged in leftovers:
        await staged.write(b"partial")
    assert await store.staging_leftovers(3600) == []  # just written: young
    assert len(await store.staging_leftovers(0)) == 2
    assert await store.clean_staging(older_than=3600) == 0
    assert await store.clean_staging() == 2
    assert await store.clean_staging() == 0
    for staged in leftovers:
        await staged.abort()  # the writer of a cleaned leftover can still let go
    assert await store.read_all(DIGEST, len(DATA)) == DATA  # committed content stays
