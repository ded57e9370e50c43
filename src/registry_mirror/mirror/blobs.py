"""Blobs: cache hits, one upstream download per blob shared by every client (the fill
table), the global download cap, and the pins that keep what is in use from eviction."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from registry_mirror.index import Index
from registry_mirror.metrics import Metrics
from registry_mirror.mirror.direct import DirectBlob
from registry_mirror.mirror.errors import TooManyFetches, Uncacheable
from registry_mirror.mirror.fill import BlobFill, WriteBudget
from registry_mirror.mirror.guard import StorageGuard
from registry_mirror.mirror.presence import Presence
from registry_mirror.mirror.routing import Route
from registry_mirror.outcome import CacheResult, Outcome
from registry_mirror.reference import Digest
from registry_mirror.storage import BlobInfo, BlobStore, Delivery
from registry_mirror.upstream import UpstreamError

__all__ = ["BlobSource", "Blobs", "Pins"]

FETCH_QUEUE_WAIT: Final = 30.0  # a download beyond limits.upstream_fetches waits this long


class Pins:
    """Digests in use (being written or served): eviction leaves them alone."""

    def __init__(self) -> None:
        self._held: Counter[Digest] = Counter()

    def __contains__(self, digest: Digest) -> bool:
        return digest in self._held

    def pinned(self) -> list[Digest]:
        return list(self._held)

    def add(self, digest: Digest) -> None:
        self._held[digest] += 1

    def remove(self, digest: Digest) -> None:
        self._held[digest] -= 1
        if self._held[digest] <= 0:
            del self._held[digest]

    @contextlib.contextmanager
    def hold(self, digest: Digest) -> Iterator[None]:
        """Pinned for the duration."""
        self.add(digest)
        try:
            yield
        finally:
            self.remove(digest)


@dataclass(frozen=True, slots=True)
class BlobSource:
    """Where a blob's bytes come from: a committed file, a fill in progress, or (when
    the store cannot take it) a direct upstream download."""

    digest: Digest
    size: int | None
    delivery: Delivery | None = None  # a committed blob: how the store gives it
    live: BlobFill | DirectBlob | None = None


class Blobs:
    """Blobs are reported to ``on_stored`` (bytes on disk) once committed and indexed."""

    def __init__(
        self,
        store: BlobStore,
        index: Index,
        presence: Presence,
        guard: StorageGuard,
        pins: Pins,
        *,
        on_stored: Callable[[int], None],
        max_fetches: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.max_fetches = max_fetches
        self._metrics = metrics
        self._presence = presence
        self._guard = guard
        self._pins = pins
        self._on_stored = on_stored
        self._fills: dict[tuple[str, Digest], BlobFill] = {}
        self._budget = WriteBudget()  # bytes received by the fills, not yet written
        self._fetch_freed = asyncio.Event()  # set (and replaced) when a download ends
        self.queued = 0  # requests waiting for a download slot (limits.upstream_fetches)

    def __repr__(self) -> str:
        return f"<Blobs fills={len(self._fills)}>"

    @property
    def downloads(self) -> int:
        """Upstream downloads in progress."""
        return len(self._fills)

    def fills(self) -> list[BlobFill]:
        """The downloads in progress (for the metrics: a copy, read at scrape time)."""
        return list(self._fills.values())

    async def close(self) -> None:
        """Cancel the downloads in progress."""
        tasks = [fill.task for fill in self._fills.values() if fill.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def blob(
        self, route: Route, digest: Digest, outcome: Outcome | None = None
    ) -> BlobSource:
        """A cache hit (a file) or a fill in progress; starts the fill on a miss.

        Served under ``route`` only when the digest is linked to it or upstream confirms
        it there; storage stays shared, so a confirmed digest is never downloaded twice.
        ``outcome`` is told how: a hit, a miss (this request started the download, or
        went straight to upstream), coalesced (it follows a download in progress).
        """
        outcome = outcome or Outcome()
        key = (route.key, digest)
        fill = self._fills.get(key)
        # A fill forgets itself only after its commit, so looking at the store twice (with
        # the table in between) closes the window where a blob is in neither.
        for _ in range(2):
            if fill is not None:
                break
            hit = await self._cached_blob(route, digest)
            if hit is not None:
                outcome.result = CacheResult.HIT
                return hit
            fill = self._fills.get(key) or self._fill_elsewhere(digest)
        if fill is None and self.max_fetches and len(self._fills) >= self.max_fetches:
            await self._fetch_slot()
            return await self.blob(route, digest, outcome)  # look again: cached by now?
        if fill is None:
            outcome.result = CacheResult.MISS
            fill = self._start_fill(route, digest)
        else:
            outcome.result = CacheResult.COALESCED
        if fill.route.key != route.key:
            # Another repository's download of these bytes: followed once upstream
            # confirms the digest here too (no second download).
            await self._presence.confirm(route, digest, manifest=False)
        try:
            size = await fill.ready()
        except Uncacheable as exc:
            outcome.result = CacheResult.MISS
            return await self._direct(route, digest, exc)
        except UpstreamError:
            if fill.route.key == route.key:
                raise
            # Its repository failed, this one has the digest: a download of its own.
            own = self._fills.get(key)
            outcome.result = CacheResult.MISS if own is None else CacheResult.COALESCED
            fill = own or self._start_fill(route, digest)
            try:
                size = await fill.ready()
            except Uncacheable as exc:
                outcome.result = CacheResult.MISS
                return await self._direct(route, digest, exc)
        return BlobSource(digest, size, live=fill)

    async def _fetch_slot(self) -> None:
        """Queue (up to ``FETCH_QUEUE_WAIT``) until the downloads in progress are fewer
        than ``limits.upstream_fetches``; TooManyFetches after that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FETCH_QUEUE_WAIT
        self.queued += 1
        try:
            while len(self._fills) >= self.max_fetches:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TooManyFetches(f"{len(self._fills)} upstream downloads in progress")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._fetch_freed.wait()
        finally:
            self.queued -= 1

    def _fetch_done(self, _task: asyncio.Task[None]) -> None:
        """A download ended: wake everyone queued for a slot (they look again)."""
        freed, self._fetch_freed = self._fetch_freed, asyncio.Event()
        freed.set()

    def _fill_elsewhere(self, digest: Digest) -> BlobFill | None:
        """A download of ``digest`` in progress through another repository."""
        for fill in self._fills.values():
            if fill.digest == digest and fill.error is None:
                return fill
        return None

    def _start_fill(self, route: Route, digest: Digest) -> BlobFill:
        if self.max_fetches and len(self._fills) >= self.max_fetches:
            raise TooManyFetches(f"{len(self._fills)} upstream downloads in progress")
        key = (route.key, digest)
        fill = BlobFill(
            digest, route, self.store, self._blob_committed, self._budget, metrics=self._metrics
        )
        self._fills[key] = fill
        self._pins.add(digest)

        def forget(_: object) -> None:
            self._pins.remove(digest)
            if self._fills.get(key) is fill:
                del self._fills[key]

        task = fill.start()
        task.add_done_callback(forget)
        task.add_done_callback(self._fetch_done)
        return fill

    async def _direct(self, route: Route, digest: Digest, exc: Uncacheable) -> BlobSource:
        self._guard.failing(exc)
        stream = await route.upstream.get_blob(route.repo, digest)
        return BlobSource(digest, stream.size, live=DirectBlob(digest, stream))

    async def _cached_blob(self, route: Route, digest: Digest) -> BlobSource | None:
        info = await self.store.stat(digest)
        if info is None:
            return None
        await self._presence.check(route, digest, manifest=False)
        self.index.touch(digest)
        return BlobSource(digest, info.size, delivery=await self.store.delivery(digest))

    async def _blob_committed(self, route: Route, digest: Digest, info: BlobInfo) -> None:
        if await self._guard.record(self.index.put_blob(route.key, digest, info.size)):
            self._on_stored(info.size)
        else:
            # Never leave a file the index does not know of; the clients still get
            # their (verified) bytes, the blob is just not cached.
            await self.store.delete(digest)

    async def blob_size(
        self, route: Route, digest: Digest, outcome: Outcome | None = None
    ) -> int | None:
        """For HEAD: the cached size (once linked or confirmed), or upstream's answer to
        a HEAD (no download). ``outcome``: a hit, coalesced (the size from a download in
        progress) or a miss (upstream asked)."""
        outcome = outcome or Outcome()
        info = await self.store.stat(digest)
        if info is not None:
            await self._presence.check(route, digest, manifest=False)
            outcome.result = CacheResult.HIT
            return info.size
        fill = self._fills.get((route.key, digest))
        if fill is not None:
            try:
                size = await fill.ready()
            except Uncacheable as exc:
                self._guard.failing(exc)  # the download goes on uncached: ask upstream
            else:
                outcome.result = CacheResult.COALESCED
                return size
        outcome.result = CacheResult.MISS
        return await route.upstream.head_blob(route.repo, digest)
