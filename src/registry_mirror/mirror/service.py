"""The pull-through policy: tag revalidation, single-flight fills, stale-if-error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from registry_mirror.index import GenerationWatch, Index, IndexError_, ManifestRecord
from registry_mirror.logs import ThrottledLog
from registry_mirror.media_types import (
    IMAGE_TYPES,
    INDEX_TYPES,
    Accept,
    ManifestParseError,
    Platform,
    detect_manifest,
    parse_manifest,
)
from registry_mirror.mirror.direct import DirectBlob
from registry_mirror.mirror.errors import TooManyFetches, Uncacheable
from registry_mirror.mirror.eviction import Evictor, StorageLimits
from registry_mirror.mirror.fill import BlobFill
from registry_mirror.mirror.links import RepoLinks
from registry_mirror.mirror.routing import Route, Router
from registry_mirror.mirror.singleflight import SingleFlight
from registry_mirror.reference import Digest, RepoName, Tag, parse_digest
from registry_mirror.storage import BlobInfo, BlobStore, StorageError
from registry_mirror.upstream import (
    MAX_TAG_PAGES,
    ManifestInfo,
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = ["BlobSource", "Manifest", "ManifestUnacceptable", "Mirror", "TagListing"]

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
MANIFEST_MEMORY: Final = 8 * 1024 * 1024  # bytes of manifest bodies kept in memory
DEFAULT_PLATFORM: Final = Platform("linux", "amd64")
FETCH_QUEUE_WAIT: Final = 30.0  # a download beyond limits.upstream_fetches waits this long
PENDING_TAG_TTL: Final = 300.0  # a HEAD's tag → digest answer, waiting for that manifest
MAX_PENDING_TAGS: Final = 4096
TAG_LIST_TTL: Final = 30.0  # a tag list read from upstream serves the following pages
MAX_TAG_LISTS: Final = 256


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


@dataclass(frozen=True, slots=True)
class TagListing:
    tags: list[str]
    stale: bool = False  # upstream could not be asked: the tags the cache knows
    truncated: bool = False  # upstream has more pages than the mirror reads


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
        self._watch = GenerationWatch(generation, self._clear)

    def _clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def current(self) -> bytes:
        """The generation, forgetting everything if it changed; pass it to :meth:`put`."""
        return self._watch.current()

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
        if not self._watch.still(generation) or digest in self._items:
            return
        if len(body) > self._limit // 4:
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
        # Keyed by what is really fetched (repository and digest): a repository where the
        # digest is missing or slow never fails requests through another one.
        self._manifest_fetches: SingleFlight[tuple[str, Digest], Manifest] = SingleFlight(
            "manifest fetches"
        )
        self._confirms: SingleFlight[tuple[str, str, Digest], None] = SingleFlight("confirms")
        self._fills: dict[tuple[str, Digest], BlobFill] = {}
        self._links = RepoLinks(index)
        # (repository key, tag) → (digest, deadline): a HEAD named the digest, not cached yet
        self._pending_tags: OrderedDict[tuple[str, str], tuple[Digest, float]] = OrderedDict()
        self._tag_lists: OrderedDict[str, tuple[float, TagListing]] = OrderedDict()
        self._tag_listings: SingleFlight[str, TagListing] = SingleFlight("tag lists")
        self._fetch_freed = asyncio.Event()  # set (and replaced) when a download ends
        self._stale_log = ThrottledLog(log)  # once a minute per repository
        self._serving: Counter[str] = Counter()
        self._reconciler: asyncio.Task[None] | None = None
        self._storage_log = ThrottledLog(log)
        self.evictor = Evictor(
            index, store, limits or StorageLimits(), self._in_use, on_evict=self._evicted
        )

    async def start(self) -> None:
        await self.evictor.start()
        self._reconciler = asyncio.create_task(self._adopt_orphans())

    async def _adopt_orphans(self) -> None:
        """Files committed just before a crash, without their index row: verified and
        indexed (so they are counted and evictable), or removed if damaged. A manifest is
        indexed as one again, with its media type and references; which repository it
        came through is lost with the row, so it is linked to none."""
        try:
            snapshot = await self.index.snapshot()
            adopted = removed = 0
            async for digest in self.store.iter_digests():
                if str(digest) in snapshot.items or self._filling(digest):
                    continue
                ok, size = await self.store.verify(digest)
                if ok and await self._record(self._adopt(digest, size)):
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

    async def _adopt(self, digest: Digest, size: int) -> None:
        parsed = None
        if size <= MAX_MANIFEST_SIZE:
            body = await self.store.read_all(digest, MAX_MANIFEST_SIZE)
            parsed = None if body is None else detect_manifest(body)
        if parsed is None:
            await self.index.put_blob(None, digest, size)
        else:
            record = ManifestRecord(digest, parsed.media_type, size)
            await self.index.put_manifest(None, record, parsed.references)

    def _in_use(self) -> list[str]:
        """Digests being written or served right now: eviction leaves them alone."""
        return [str(fill.digest) for fill in self._fills.values()] + list(self._serving)

    def _filling(self, digest: Digest) -> bool:
        return any(fill.digest == digest for fill in self._fills.values())

    def _evicted(self, digests: list[str]) -> None:
        self._memory.discard(digests)
        self._links.forget(digests)

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
        """The manifest to answer with.

        By tag: always asks upstream (HEAD) which digest the tag points at now;
        on an upstream outage or rate limit, falls back to the last known mapping;
        an index is negotiated for ``accept``. By digest: exactly those bytes, never
        another manifest; from the cache when the digest is linked to the repository,
        else confirmed with (or fetched from) upstream under that repository.
        """
        if accept.only_schema1:
            raise ManifestUnacceptable(
                "only schema1 manifests accepted: this mirror serves schema2 and OCI manifests"
            )
        if isinstance(reference, Digest):
            found = await self._by_digest(route, reference)
            self.index.touch(found.digest)
            return found
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
            # Upstream just named it under this repository: linked, and the tag recorded
            # (whether the client asked with GET or, as Docker and containerd do, HEAD).
            await self._ensure_linked(route, info.digest)
            await self._record(self.index.set_tag(route.key, tag, info.digest))
            return cached
        # Not cached: the tag is recorded once this digest is (see _store_manifest).
        self._expect_tag(route, tag, info.digest)
        answerable = accept.accepts(info.media_type) or accept.wildcard or not accept.types
        if not need_body and info.media_type not in INDEX_TYPES and info.size and answerable:
            return Manifest(info.digest, info.media_type, info.size, None)
        return await self._by_digest(route, info.digest, tag=tag)

    def _expect_tag(self, route: Route, tag: str, digest: Digest) -> None:
        """Remember, briefly, that upstream said ``tag`` → ``digest``: a client that
        resolved the tag with HEAD fetches the manifest next by digest."""
        key = (route.key, tag)
        self._pending_tags[key] = (digest, time.monotonic() + PENDING_TAG_TTL)
        self._pending_tags.move_to_end(key)
        while len(self._pending_tags) > MAX_PENDING_TAGS:
            self._pending_tags.popitem(last=False)

    async def _settle_tags(self, route: Route, digest: Digest) -> None:
        """``digest`` is now cached under ``route``: record the tags a recent HEAD named."""
        now = time.monotonic()
        settled = [
            key
            for key, (expected, deadline) in self._pending_tags.items()
            if key[0] == route.key and expected == digest and deadline > now
        ]
        for key in settled:
            del self._pending_tags[key]
            await self._record(self.index.set_tag(route.key, key[1], digest))

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
            if not await self._links.linked(route.key, digest):
                # Cached through another repository: served here only if upstream has it
                # here too (a HEAD, no download); else MANIFEST_UNKNOWN (or the outage).
                await self._confirm(route, digest, manifest=True)
            return cached
        return await self._manifest_fetches.run(
            (route.key, digest), lambda: self._fetch_manifest(route, str(digest), digest, tag=tag)
        )

    async def _confirm(self, route: Route, digest: Digest, *, manifest: bool) -> None:
        """Ask upstream whether ``digest`` exists under ``route`` (HEAD); link it if so.
        Raises the upstream's error otherwise (UpstreamNotFound: unknown there)."""

        async def ask() -> None:
            if manifest:
                info = await route.upstream.head_manifest(route.repo, str(digest))
                if info.digest is not None and info.digest != digest:
                    raise UpstreamDigestMismatch(
                        f"{route} answered a HEAD of {digest} with {info.digest}"
                    )
            else:
                await route.upstream.head_blob(route.repo, digest)
            await self._ensure_linked(route, digest)

        await self._confirms.run((route.key, "m" if manifest else "b", digest), ask)

    async def _ensure_linked(self, route: Route, digest: Digest) -> None:
        """Link ``digest`` (and what it references) to the route; cheap when it is."""
        if await self._links.linked(route.key, digest):
            return
        try:
            await self._links.link(route.key, digest)
        except IndexError_ as exc:
            self._storage_failing(exc)  # asked upstream again next time; still served now

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
            # What the manifest references is served under this repository too.
            await self._links.link(route.key, digest)
        except (StorageError, IndexError_) as exc:
            self._storage_failing(exc)
            return False
        await self._settle_tags(route, digest)
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
        """A cache hit (a file) or a fill in progress; starts the fill on a miss.

        Served under ``route`` only when the digest is linked to it or upstream confirms
        it there; storage stays shared, so a confirmed digest is never downloaded twice.
        """
        key = (route.key, digest)
        fill = self._fills.get(key)
        # A fill forgets itself only after its commit, so looking at the store twice (with
        # the table in between) closes the window where a blob is in neither.
        for _ in range(2):
            if fill is not None:
                break
            hit = await self._cached_blob(route, digest)
            if hit is not None:
                return hit
            fill = self._fills.get(key) or self._fill_elsewhere(digest)
        if fill is None and self.max_fetches and len(self._fills) >= self.max_fetches:
            await self._fetch_slot()
            return await self.blob(route, digest)  # look again: it may be cached by now
        if fill is None:
            fill = self._start_fill(route, digest)
        elif fill.route.key != route.key:
            # Another repository's download of these bytes: followed once upstream
            # confirms the digest here too (no second download).
            await self._confirm(route, digest, manifest=False)
        try:
            size = await fill.ready()
        except Uncacheable as exc:
            return await self._direct(route, digest, exc)
        except UpstreamError:
            if fill.route.key == route.key:
                raise
            # Its repository failed, this one has the digest: a download of its own.
            fill = self._fills.get(key) or self._start_fill(route, digest)
            try:
                size = await fill.ready()
            except Uncacheable as exc:
                return await self._direct(route, digest, exc)
        return BlobSource(digest, size, live=fill)

    async def _fetch_slot(self) -> None:
        """Queue (up to ``FETCH_QUEUE_WAIT``) until the downloads in progress are fewer
        than ``limits.upstream_fetches``; TooManyFetches after that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FETCH_QUEUE_WAIT
        while len(self._fills) >= self.max_fetches:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TooManyFetches(f"{len(self._fills)} upstream downloads in progress")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._fetch_freed.wait()

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
        fill = BlobFill(digest, route, self.store, self._blob_committed)
        self._fills[key] = fill

        def forget(_: object) -> None:
            if self._fills.get(key) is fill:
                del self._fills[key]

        task = fill.start()
        task.add_done_callback(forget)
        task.add_done_callback(self._fetch_done)
        return fill

    async def _direct(self, route: Route, digest: Digest, exc: Uncacheable) -> BlobSource:
        self._storage_failing(exc)
        stream = await route.upstream.get_blob(route.repo, digest)
        return BlobSource(digest, stream.size, live=DirectBlob(digest, stream))

    async def _cached_blob(self, route: Route, digest: Digest) -> BlobSource | None:
        info = await self.store.stat(digest)
        if info is None:
            return None
        if not await self._links.linked(route.key, digest):
            await self._confirm(route, digest, manifest=False)
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
        """For HEAD: the cached size (once linked or confirmed), or upstream's answer to
        a HEAD (no download)."""
        info = await self.store.stat(digest)
        if info is not None:
            if not await self._links.linked(route.key, digest):
                await self._confirm(route, digest, manifest=False)
            return info.size
        fill = self._fills.get((route.key, digest))
        if fill is not None:
            try:
                return await fill.ready()
            except Uncacheable as exc:
                self._storage_failing(exc)  # the download goes on uncached: ask upstream
        return await route.upstream.head_blob(route.repo, digest)

    # --- listings -------------------------------------------------------------

    async def tags(self, route: Route, *, fresh: bool = True) -> TagListing:
        """Tags from upstream; the cached ones when upstream cannot be asked.

        The full upstream list is kept for a short while, so the following pages of a
        paginated listing (``fresh=False``) do not read every upstream page again.
        """
        now = time.monotonic()
        remembered = self._tag_lists.get(route.key)
        if not fresh and remembered is not None and remembered[0] > now:
            return remembered[1]
        try:
            listing = await self._tag_listings.run(route.key, lambda: self._list_tags(route))
        except (UpstreamUnavailable, UpstreamRateLimited) as exc:
            cached = await self.index.list_tags(route.key)
            if not cached:
                raise
            self._stale_log(
                f"tags {route.key}",
                logging.WARNING,
                "upstream unusable (%s); listing cached tags of %s",
                exc,
                route,
            )
            return TagListing(cached, stale=True)
        self._tag_lists[route.key] = (now + TAG_LIST_TTL, listing)
        self._tag_lists.move_to_end(route.key)
        while len(self._tag_lists) > MAX_TAG_LISTS:
            self._tag_lists.popitem(last=False)
        return listing

    async def _list_tags(self, route: Route) -> TagListing:
        tags = await route.upstream.list_tags(route.repo)
        truncated = tags.truncated
        if truncated:
            self._stale_log(
                f"tags truncated {route.key}",
                logging.WARNING,
                "tag list of %s cut at %d upstream pages (%d tags)",
                route,
                MAX_TAG_PAGES,
                len(tags),
            )
        return TagListing(sorted(set(tags)), truncated=truncated)

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
