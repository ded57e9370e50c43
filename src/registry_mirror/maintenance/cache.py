"""A cache root opened for an operator command, through the same backends as the server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from registry_mirror.backends import CacheMissing, cache_exists, open_index, open_store
from registry_mirror.config import Settings
from registry_mirror.index import Index
from registry_mirror.rootlock import bump_generation, operator_lock
from registry_mirror.storage import BlobStore

__all__ = ["Cache", "CacheMissing"]


class Cache:
    """A cache root opened for an operator command.

    Read-only commands (``ls``, ``du``, ``verify``) run beside the server as they are.
    Commands that remove content do it in :meth:`removing`: one such command at a time,
    each index transaction small and re-checked inside (nothing a server committed
    meanwhile is removed), and the server told after each one to forget what it
    remembers of the index (see :mod:`registry_mirror.rootlock`)."""

    store: BlobStore
    index: Index

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.root
        self._opened = contextlib.AsyncExitStack()

    @classmethod
    def opened(cls, settings: Settings, store: BlobStore, index: Index) -> Cache:
        """The cache of a running server, over its own open store and index (closed by
        the server, not here): the admin actions use the commands' code in the server."""
        cache = cls(settings)
        cache.store, cache.index = store, index
        return cache

    async def __aenter__(self) -> Cache:
        if not await asyncio.to_thread(cache_exists, self.root):
            raise CacheMissing(f"no registry-mirror cache at {self.root} (no index.db and blobs/)")
        async with contextlib.AsyncExitStack() as stack:
            self.store = await stack.enter_async_context(open_store(self.settings, create=False))
            self.index = await stack.enter_async_context(open_index(self.settings))
            self._opened = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._opened.aclose()

    @contextlib.asynccontextmanager
    async def removing(self) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Hold the operators' lock; yields ``changed()``, to call after each removal."""

        changed = self.changed
        lock = operator_lock(self.root)
        await asyncio.to_thread(lock.__enter__)
        try:
            await changed()
            yield changed
        finally:
            await changed()
            await asyncio.to_thread(lock.__exit__, None, None, None)

    async def changed(self) -> None:
        """Tell a server on this root to forget what it remembers of the index (tags,
        manifest bodies, links): a change made here is what it sees next."""
        await asyncio.to_thread(bump_generation, self.root)
