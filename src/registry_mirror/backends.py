"""The one place that opens the blob store and the index a settings object names, for
the server and every operator command alike. Each is an async context manager: what
was opened is closed on every exit, a failed start included."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from registry_mirror.config import Settings
from registry_mirror.index import Index, SQLiteIndex
from registry_mirror.storage import BlobStore, FilesystemBlobStore

__all__ = ["INDEX_FILE", "CacheMissing", "cache_exists", "open_index", "open_store"]

INDEX_FILE = "index.db"


class CacheMissing(Exception):
    """No cache at the given root."""


def cache_exists(root: Path) -> bool:
    """Whether ``root`` holds a cache (blocking: call it off the event loop)."""
    return (root / INDEX_FILE).is_file() and FilesystemBlobStore(root).blobs_dir.is_dir()


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, create: bool = True) -> AsyncIterator[BlobStore]:
    """The blob store of the cache; its layout created when ``create``."""
    store = FilesystemBlobStore(settings.root)
    try:
        if create:
            await asyncio.to_thread(store.prepare)
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def open_index(
    settings: Settings, *, generation: Callable[[], bytes] | None = None
) -> AsyncIterator[Index]:
    """The index of the cache, open; ``generation`` tells it (and its memories) when an
    operator command removed content."""
    index = SQLiteIndex(settings.root / INDEX_FILE, generation=generation)
    try:
        await index.open()
        yield index
    finally:
        await index.close()
