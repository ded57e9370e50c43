"""Every implementation of a storage seam, behind one fixture each.

The contract suites (``test_blobstore.py``, ``test_index.py``) are written once against
the seam and run against every implementation: ``blob_store`` over the filesystem store
and the in-memory fake, ``index`` over SQLite and the in-memory fake. An implementation
declares the optional capabilities it has; their tests run only against those that do.

Test functions here may be ``async def``: each runs in a loop of its own.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from registry_mirror.config import load_settings
from registry_mirror.index import Index, SQLiteIndex
from registry_mirror.maintenance import Cache
from registry_mirror.reference import Digest
from registry_mirror.rootlock import RootLock
from registry_mirror.storage import Capacity, FilesystemBlobStore, LocalFiles, Staging
from tests.support.fakes import MemoryBlobStore, MemoryIndex
from tests.support.store import blobs_dir

LOCAL_FILES: Final = "local files"  # open_local (sendfile)
CAPACITY: Final = "capacity"  # disk_usage, disk_sizes, free_space, allocated
STAGING_CLEANUP: Final = "staging cleanup"  # staging_leftovers, clean_staging
CAPABILITY_PROTOCOLS: Final[dict[str, type]] = {
    LOCAL_FILES: LocalFiles,
    CAPACITY: Capacity,
    STAGING_CLEANUP: Staging,
}
STORE_CAPABILITIES: Final[dict[str, frozenset[str]]] = {
    "filesystem": frozenset(CAPABILITY_PROTOCOLS),
    "memory": frozenset(),
}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


@dataclass
class StoreHarness:
    """A blob store under test, how to damage a committed blob behind its back, and
    whether a blob is published (looked at directly, synchronously: from a callback)."""

    name: str
    store: Any  # the BlobStore core, and the capabilities it declares
    corrupt: Callable[[Digest], None]  # same length, other bytes
    capabilities: frozenset[str]
    visible: Callable[[Digest], bool]


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _filesystem_store(tmp_path: Path) -> StoreHarness:
    store = FilesystemBlobStore(tmp_path / "store")
    store.prepare()

    def corrupt(digest: Digest) -> None:
        path = store.path_for(digest)
        path.write_bytes(_flip_first_byte(path.read_bytes()))

    def visible(digest: Digest) -> bool:
        return store.path_for(digest).exists()

    return StoreHarness("filesystem", store, corrupt, STORE_CAPABILITIES["filesystem"], visible)


def _memory_store(tmp_path: Path) -> StoreHarness:
    store = MemoryBlobStore(chunk_size=4096)

    def corrupt(digest: Digest) -> None:
        store.blobs[digest] = _flip_first_byte(store.blobs[digest])

    def visible(digest: Digest) -> bool:
        return digest in store.blobs

    return StoreHarness("memory", store, corrupt, STORE_CAPABILITIES["memory"], visible)


STORES: Final[dict[str, Callable[[Path], StoreHarness]]] = {
    "filesystem": _filesystem_store,
    "memory": _memory_store,
}


def _store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    harness = STORES[request.param](tmp_path)
    yield harness
    asyncio.run(harness.store.close())


@pytest.fixture(params=list(STORES))
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    """Each blob store, prepared and empty; closed after the test."""
    yield from _store_fixture(request, tmp_path)


def having(capability: str) -> list[str]:
    return [name for name, caps in STORE_CAPABILITIES.items() if capability in caps]


@pytest.fixture(params=having(LOCAL_FILES))
def local_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    yield from _store_fixture(request, tmp_path)


@pytest.fixture(params=having(CAPACITY))
def sized_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    yield from _store_fixture(request, tmp_path)


@pytest.fixture(params=having(STAGING_CLEANUP))
def staging_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    yield from _store_fixture(request, tmp_path)


@dataclass
class IndexHarness:
    """An index under test (open; closed after the test) and other handles on its content:
    ``fresh()`` one not yet opened, ``remove_elsewhere`` a removal the way an operator
    command (prune, verify --repair) makes it, from another process."""

    name: str
    index: Index
    fresh: Callable[[], Index]
    remove_elsewhere: Callable[[list[Digest]], Awaitable[None]]


def _sqlite_index(tmp_path: Path) -> tuple[IndexHarness, Callable[[], None]]:
    root = tmp_path / "cache"
    blobs_dir(root).mkdir(parents=True)  # a cache the operator commands open
    lock = RootLock(root)  # the server's, as the app holds it: its generation
    index = SQLiteIndex(root / "index.db", generation=lock.generation)

    async def remove_elsewhere(digests: list[Digest]) -> None:
        settings, _ = load_settings(
            flags={"storage.filesystem.rootdirectory": str(root)}, environ={}
        )
        async with Cache(settings) as cache, cache.removing() as changed:
            await cache.index.remove(digests)
            await changed()

    harness = IndexHarness(
        "sqlite", index, lambda: SQLiteIndex(root / "index.db"), remove_elsewhere
    )
    return harness, lock.close


def _memory_index(tmp_path: Path) -> tuple[IndexHarness, Callable[[], None]]:
    index = MemoryIndex()

    async def remove_elsewhere(digests: list[Digest]) -> None:
        other = index.replica()
        await other.open()
        await other.remove(digests)
        await other.close()

    return IndexHarness("memory", index, index.replica, remove_elsewhere), lambda: None


INDEXES: Final[dict[str, Callable[[Path], tuple[IndexHarness, Callable[[], None]]]]] = {
    "sqlite": _sqlite_index,
    "memory": _memory_index,
}


@pytest.fixture(params=list(INDEXES))
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexHarness]:
    """Each index, open and empty; closed after the test."""
    harness, release = INDEXES[request.param](tmp_path)
    asyncio.run(harness.index.open())
    yield harness
    asyncio.run(harness.index.close())
    release()
