"""The pull-through policy: tag revalidation, single-flight fills, stale-if-error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from registry_mirror.index import Index, IndexError_, ManifestRecord
from registry_mirror.logs import ThrottledLog
from registry_mirror.media_types import (
    IMAGE_TYPES,
    INDEX_TYPES,
    Accept,
    ManifestParseError,
    Platform,
    parse_manifest,
)
from registry_mirror.mirror.direct import DirectBlob
from registry_mirror.mirror.errors import TooManyFetches, Uncacheable
from registry_mirror.mirror.eviction import Evictor, StorageLimits
from registry_mirror.mirror.fill import BlobFill
from registry_mirror.mirror.routing import Route, Router
from registry_mirror.mirror.singleflight import SingleFlight
from registry_mirror.reference import Digest, RepoName, Tag, parse_digest
from registry_mirror.storage import BlobInfo, BlobStore, StorageError
from registry_mirror.upstream import (
    ManifestInfo,
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = ["BlobSource", "Manifest", "ManifestUnacceptable", "Mirror"]

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
MANIFEST_MEMORY: Final = 8 * 1024 * 1024  # bytes of manifest bodies kept in memory
DEFAULT_PLATFORM: Final = Platform("linux", "amd64")


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: Digest
    media_type: str
    size: int
    body: bytes | None  # None for a HEAD answered from upstream headers alone
    stale: bool = False  # served from cache because upstream could not be asked


@dataclass(frozen=True, slots=True)
class BlobSource:
    """Where a blob's bytes come from: a committed file, a fill in progress, or (when
    the store cannot take it) a direct upstream download."""

    digest: Digest
    size: int | None
    path: Path | None = None
    live: BlobFill | DirectBlob | None = None


class ManifestUnacceptable(Exception):
    """The manifest exists, but in no form the client's ``Accept`` allows."""


class _ManifestMemory:
    """Manifest bodies by digest, LRU, bounded in bytes: digest requests never touch disk.
    Emptied when ``generation`` changes (an operator command removed content): a body
    is never served from memory after its file and row are gone."""

    def __init__(self, limit: int, generation: Callable[[], bytes]) -> None:
        self._items: OrderedDict[Digest, tuple[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._limit = limit
        self._generation = generation
        self._seen = generation()

    def current(self) -> bytes:
        """The generation, forgetting everything if it changed; pass it to :meth:`put`."""
        now = self._generation()
        if now != self._seen:
            self._items.clear()
            self._bytes = 0
            self._seen = now
        return now

    def get(self, digest: Digest) -> tuple[str, bytes] | None:
        self.current()
        item = self._items.get(digest)
        if item is not None:
            self._items.move_to_end(digest)
        return item

    def discard(self, digests: list[str]) -> None:
        for raw in digests:
            item = self._items.pop(parse_digest(raw), None)
            if item is not None:
                self._bytes -= len(item[1])

    def put(self, digest: Digest, media_type: str, body: bytes, generation: bytes) -> None:
        """Remember a body read or stored under ``generation`` (if that is still current)."""
        if self.current() != generation or digest in self._items or len(body) > self._limit // 4:
            return
        self._items[digest] = (media_type, body)
        self._bytes += len(body)
        while self._bytes > self._limit:
            _, (_, old) = self._items.popitem(last=False)
            self._bytes -= len(old)


class Mirror:
    def __init__(
        self,
        store: BlobStore,
        index: Index,
        router: Router,
        *,
        default_platform: Platform = DEFAULT_PLATFORM,
        limits: StorageLimits | None = None,
        max_fetches: int = 0,
    ) -> None:
        self.max_fetches = max_fetches
        self.store = store
        self.index = index
        self.router = router
        self.default_platform = default_platform
        self._memory = _ManifestMemory(MANIFEST_MEMORY, index.generation)
        self._tag_checks: SingleFlight[tuple[str, str], ManifestInfo] = SingleFlight("tag checks")
        self._manifest_fetches: SingleFlight[Digest, Manifest] = SingleFlight("manifest fetches")
        self._fills: dict[Digest, BlobFill] = {}
        self._stale_log = ThrottledLog(log)  # once a minute per repository
        self._serving: Counter[str] = Counter()
        self._reconciler: asyncio.Task[None] | None = None
        self._storage_log = ThrottledLog(log)
        self.evictor = Evictor(
            index, store, limits or StorageLimits(), self._in_use, on_evict=self._memory.discard
        )

    async def start(self) -> None:
        await self.evictor.start()
        self._reconciler = asyncio.create_task(self._adopt_orphans())

    async def _adopt_orphans(self) -> None:
        """Files committed just before a crash, without their index row: verified and
        indexed (so they are counted and evictable), or removed if damaged."""
        try:
            snapshot = await self.index.snapshot()
            adopted = removed = 0
            async for digest in self.store.iter_digests():
                if str(digest) in snapshot.items or digest in self._fills:
                    continue
                ok, size = await self.store.verify(digest)
                if ok and await self._record(self.index.put_blob(None, digest, size)):
                    adopted += 1
                else:
                    await self.store.delete(digest)
                    removed += 1
            if adopted or removed:
                log.info(
                    "after an unclean stop: %d files indexed again, %d damaged removed",
                    adopted,
                    removed,
                )
        except (StorageError, IndexError_) as exc:
            log.error("could not check the cache for unindexed files: %s", exc)

    def _in_use(self) -> list[str]:
        """Digests being written or served right now: eviction leaves them alone."""
        return [str(d) for d in self._fills] + list(self._serving)

    @contextlib.contextmanager
    def hold(self, digest: Digest) -> Iterator[None]:
        """Mark a blob as being served for the duration."""
        key = str(digest)
        self._serving[key] += 1
        try:
            yield
        finally:
            self._serving[key] -= 1
            if self._serving[key] <= 0:
                del self._serving[key]

    def __repr__(self) -> str:
        return f"<Mirror {self.router!r} fills={len(self._fills)}>"

    def route(self, name: RepoName, namespace: str | None = None) -> Route:
        """Which upstream and repository a client's name means (see :mod:`routing`)."""
        return self.router.resolve(name, namespace)

    # --- manifests ------------------------------------------------------------

    async def manifest(
        self, route: Route, reference: Tag | Digest, accept: Accept, *, need_body: bool = True
    ) -> Manifest:
        """The manifest to answer with, negotiated for ``accept``.

        By tag: always asks upstream (HEAD) which digest the tag points at now;
        on an upstream outage or rate limit, falls back to the last known mapping.
        By digest: from the cache, upstream only on a miss.
        """
        if accept.only_schema1:
            raise ManifestUnacceptable(
                "only schema1 manifests accepted: this mirror serves schema2 and OCI manifests"
            )
        if isinstance(reference, Digest):
            manifest = await self._by_digest(route, reference)
        else:
            manifest = await self._by_tag(route, reference.value, accept, need_body)
        served = await self._negotiate(route, manifest, accept)
        self.index.touch(served.digest)
        if served.digest != manifest.digest:
            self.index.touch(manifest.digest)
        return served

    async def _by_tag(self, route: Route, tag: str, accept: Accept, need_body: bool) -> Manifest:
        """Revalidate the tag with upstream; if upstream cannot answer (down, timing out,
        rate limiting) at any step, the last manifest cached for the tag is served."""
        try:
            return await self._revalidate(route, tag, accept, need_body)
        except UpstreamNotFound:
            await self._record(self.index.delete_tag(route.key, tag))
            raise
        except (UpstreamUnavailable, UpstreamRateLimited) as exc:
            stale = await self._stale_by_tag(route, tag)
            if stale is None:
                raise
            self._log_stale(route, tag, exc)
            return stale

    async def _revalidate(
        self, route: Route, tag: str, accept: Accept, need_body: bool
    ) -> Manifest:
        info = await self._tag_checks.run(
            (route.key, tag), lambda: route.upstream.head_manifest(route.repo, tag)
        )
        if info.digest is None:
            # An upstream that does not announce digests on HEAD: fetch by tag and hash.
            return await self._fetch_manifest(route, tag, None, tag=tag)
        cached = await self._cached_manifest(info.digest)
        if cached is not None:
            # The tag only ever points at a manifest the cache holds.
            await self._record(self.index.set_tag(route.key, tag, info.digest))
            return cached
        answerable = accept.accepts(info.media_type) or accept.wildcard or not accept.types
        if not need_body and info.media_type not in INDEX_TYPES and info.size and answerable:
            return Manifest(info.digest, info.media_type, info.size, None)
        return await self._by_digest(route, info.digest, tag=tag)

    async def _stale_by_tag(self, route: Route, tag: str) -> Manifest | None:
        digest = await self.index.get_tag(route.key, tag)
        if digest is None:
            return None
        cached = await self._cached_manifest(digest)
        if cached is None:
            return None
        return Manifest(cached.digest, cached.media_type, cached.size, cached.body, stale=True)

    def _log_stale(self, route: Route, tag: str, exc: UpstreamError) -> None:
        self._stale_log(
            route.key,
            logging.WARNING,
            "upstream unusable (%s); serving %s:%s from cache",
            exc,
            route,
            tag,
        )

    async def _by_digest(self, route: Route, digest: Digest, tag: str | None = None) -> Manifest:
        cached = await self._cached_manifest(digest)
        if cached is not None:
            return cached
        return await self._manifest_fetches.run(
            digest, lambda: self._fetch_manifest(route, str(digest), digest, tag=tag)
        )

    async def _cached_manifest(self, digest: Digest) -> Manifest | None:
        remembered = self._memory.get(digest)
        if remembered is not None:
            media_type, body = remembered
            return Manifest(digest, media_type, len(body), body)
        generation = self._memory.current()
        record = await self.index.get_manifest(digest)
        if record is None:
            return None
        try:
            stored = await self.store.read_all(digest, MAX_MANIFEST_SIZE)
        except StorageError as exc:
            log.error("cached manifest %s unreadable: %s", digest, exc)
            return None
        if stored is None or Digest.of(stored, digest.algorithm) != digest:
            if stored is not None:
                log.error("cached manifest %s is corrupt; fetching it again", digest)
            return None
        self._memory.put(digest, record.media_type, stored, generation)
        return Manifest(digest, record.media_type, len(stored), stored)

    async def _fetch_manifest(
        self, route: Route, reference: str, expected: Digest | None, *, tag: str | None
    ) -> Manifest:
        info, body = await route.upstream.get_manifest(route.repo, reference)
        algorithm = expected.algorithm if expected else "sha256"
        actual = Digest.of(body, algorithm)
        if expected is not None and actual != expected:
            raise UpstreamDigestMismatch(f"manifest {route}@{expected} hashed to {actual}")
        if (
            expected is None
            and info.digest is not None
            and info.digest != Digest.of(body, info.digest.algorithm)
        ):
            raise UpstreamDigestMismatch(f"manifest {route}:{reference} does not match its digest")
        media_type = info.media_type
        try:
            parsed = parse_manifest(body, media_type)
        except ManifestParseError as exc:
            raise UpstreamProtocolError(f"manifest {route}:{reference}: {exc}") from exc
        media_type = parsed.media_type
        if media_type not in INDEX_TYPES | IMAGE_TYPES:
            # Never store or serve, under this mirror's name, content typed as something
            # else (text/html from a hostile upstream would be a stored XSS).
            raise UpstreamProtocolError(
                f"manifest {route}:{reference} has an unsupported media type {media_type[:80]!r}"
            )
        stored = await self._store_manifest(route, actual, media_type, body, parsed.references)
        if tag is not None and stored:
            await self._record(self.index.set_tag(route.key, tag, actual))
        return Manifest(actual, media_type, len(body), body)

    async def _store_manifest(
        self, route: Route, digest: Digest, media_type: str, body: bytes, refs: list[Digest]
    ) -> bool:
        generation = self._memory.current()
        try:
            staged = await self.store.begin_write()
            try:
                await staged.write(body)
                info = await staged.commit(digest, len(body))
            except BaseException:
                await staged.abort()
                raise
            record = ManifestRecord(digest, media_type, len(body))
            try:
                await self.index.put_manifest(route.key, record, refs)
            except IndexError_:
                # Never leave a file the index does not know of (as for blobs).
                await self.store.delete(digest)
                raise
            self.evictor.added(info.disk)
            self._memory.put(digest, media_type, body, generation)
        except (StorageError, IndexError_) as exc:
            self._storage_failing(exc)
            return False
        return True

    async def _negotiate(self, route: Route, manifest: Manifest, accept: Accept) -> Manifest:
        if manifest.media_type not in INDEX_TYPES or accept.indexes:
            return manifest
        # A client that takes no index gets the default platform's image manifest.
        body = manifest.body
        if body is None:
            manifest = await self._by_digest(route, manifest.digest)
            body = manifest.body
        assert body is not None
        try:
            parsed = parse_manifest(body, manifest.media_type)
        except ManifestParseError as exc:
            raise UpstreamProtocolError(f"index {manifest.digest}: {exc}") from exc
        child = parsed.child_for(self.default_platform)
        if child is None:
            raise ManifestUnacceptable(
                f"the index has no {self.default_platform} manifest and the client accepts no index"
            )
        result = await self._by_digest(route, child[0])
        if result.media_type in INDEX_TYPES:
            raise ManifestUnacceptable("nested index for the default platform")
        return Manifest(
            result.digest, result.media_type, result.size, result.body, stale=manifest.stale
        )

    # --- blobs ----------------------------------------------------------------

    async def blob(self, route: Route, digest: Digest) -> BlobSource:
        """A cache hit (a file) or a fill in progress; starts the fill on a miss."""
        fill = self._fills.get(digest)
        # A fill forgets itself only after its commit, so looking at the store twice (with
        # the table in between) closes the window where a blob is in neither.
        for _ in range(2):
            if fill is not None:
                break
            hit = await self._cached_blob(digest)
            if hit is not None:
                return hit
            fill = self._fills.get(digest)
        if fill is None:
            if self.max_fetches and len(self._fills) >= self.max_fetches:
                raise TooManyFetches(f"{len(self._fills)} upstream downloads in progress")
            fill = BlobFill(digest, route, self.store, self._blob_committed)
            self._fills[digest] = fill
            fill.start().add_done_callback(lambda _t: self._fills.pop(digest, None))
        try:
            size = await fill.ready()
        except Uncacheable as exc:
            self._storage_failing(exc)
            stream = await route.upstream.get_blob(route.repo, digest)
            return BlobSource(digest, stream.size, live=DirectBlob(digest, stream))
        return BlobSource(digest, size, live=fill)

    async def _cached_blob(self, digest: Digest) -> BlobSource | None:
        info = await self.store.stat(digest)
        if info is None:
            return None
        self.index.touch(digest)
        return BlobSource(digest, info.size, path=self.store.local_path(digest))

    def _storage_failing(self, exc: Exception) -> None:
        """Logged once a minute, not once a request, while the store is failing."""
        self._storage_log(
            "storage", logging.ERROR, "cache storage failing, serving without caching: %s", exc
        )

    async def _blob_committed(self, route: Route, digest: Digest, info: BlobInfo) -> None:
        if await self._record(self.index.put_blob(route.key, digest, info.size)):
            self.evictor.added(info.disk)
        else:
            # Never leave a file the index does not know of; the clients still get
            # their (verified) bytes, the blob is just not cached.
            await self.store.delete(digest)

    async def _record(self, write: Awaitable[None]) -> bool:
        """An index write that must not fail the request (the disk may be full)."""
        try:
            await write
        except IndexError_ as exc:
            self._storage_failing(exc)
            return False
        return True

    async def blob_size(self, route: Route, digest: Digest) -> int | None:
        """For HEAD: the cached size, or upstream's answer to a HEAD (no download)."""
        info = await self.store.stat(digest)
        if info is not None:
            return info.size
        fill = self._fills.get(digest)
        if fill is not None:
            return await fill.ready()
        return await route.upstream.head_blob(route.repo, digest)

    # --- listings -------------------------------------------------------------

    async def tags(self, route: Route) -> list[str]:
        """Tags from upstream; the cached ones when upstream cannot be asked."""
        try:
            tags = await route.upstream.list_tags(route.repo)
        except (UpstreamUnavailable, UpstreamRateLimited) as exc:
            cached = await self.index.list_tags(route.key)
            if not cached:
                raise
            log.warning("upstream unusable (%s); listing cached tags of %s", exc, route)
            return cached
        return sorted(set(tags))

    async def catalog_keys(self) -> list[tuple[str, str]]:
        """Cached repositories: (as clients name them, cache key), e.g.
        (``ghcr.io/o/i``, ``ghcr.io/o/i``) and (``library/x``, ``docker.io/library/x``)."""
        keys = await self.index.repositories()
        return sorted((self.router.display(key), key) for key in keys)

    async def close(self) -> None:
        await self.evictor.stop()
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
        tasks = [fill.task for fill in self._fills.values() if fill.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
