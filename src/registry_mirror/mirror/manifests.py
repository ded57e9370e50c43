"""Manifests: tags revalidated with upstream, bodies by digest from memory or the cache,
stale-if-error, negotiation of an index for clients that take none."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from registry_mirror.index import GenerationWatch, Index, IndexFailure, ManifestRecord
from registry_mirror.logs import ThrottledLog
from registry_mirror.media_types import (
    IMAGE_TYPES,
    INDEX_TYPES,
    Accept,
    ManifestParseError,
    Platform,
    parse_manifest,
)
from registry_mirror.mirror.guard import StorageGuard
from registry_mirror.mirror.presence import Presence
from registry_mirror.mirror.routing import Route
from registry_mirror.mirror.singleflight import SingleFlight
from registry_mirror.outcome import CacheResult, Outcome
from registry_mirror.reference import Digest, Tag
from registry_mirror.storage import BlobStore, StorageError
from registry_mirror.upstream import (
    ManifestInfo,
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = [
    "MAX_MANIFEST_SIZE",
    "Manifest",
    "ManifestMemory",
    "ManifestUnacceptable",
    "Manifests",
    "Refreshed",
]

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE: Final = 4 * 1024 * 1024
MANIFEST_MEMORY: Final = 8 * 1024 * 1024  # bytes of manifest bodies kept in memory
DEFAULT_PLATFORM: Final = Platform("linux", "amd64")
PENDING_TAG_TTL: Final = 300.0  # a HEAD's tag → digest answer, waiting for that manifest
MAX_PENDING_TAGS: Final = 4096


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: Digest
    media_type: str
    size: int
    body: bytes | None  # None for a HEAD answered from upstream headers alone
    stale: bool = False  # served from cache because upstream could not be asked


@dataclass(frozen=True, slots=True)
class Refreshed:
    """A tag revalidated on demand: what it named before, what it names now, and the
    manifests that had to be fetched for it (the index's children included)."""

    old: Digest | None
    new: Manifest
    fetched: list[Digest]


class ManifestUnacceptable(Exception):
    """The manifest exists, but in no form the client's ``Accept`` allows."""


class ManifestMemory:
    """Manifest bodies by digest, LRU, bounded in bytes: digest requests never touch disk.
    Emptied when ``generation`` changes (an operator command removed content): a body
    is never served from memory after its file and row are gone."""

    def __init__(self, limit: int, generation: Callable[[], bytes]) -> None:
        # The answers themselves (immutable): a hit builds nothing.
        self._items: OrderedDict[Digest, Manifest] = OrderedDict()
        self._bytes = 0
        self._limit = limit
        self._watch = GenerationWatch(generation, self._clear)

    def _clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def current(self) -> bytes:
        """The generation, forgetting everything if it changed; pass it to :meth:`put`."""
        return self._watch.current()

    def get(self, digest: Digest) -> Manifest | None:
        self.current()
        item = self._items.get(digest)
        if item is not None:
            self._items.move_to_end(digest)
        return item

    def discard(self, digests: list[Digest]) -> None:
        for digest in digests:
            item = self._items.pop(digest, None)
            if item is not None:
                self._bytes -= item.size

    def put(self, digest: Digest, media_type: str, body: bytes, generation: bytes) -> Manifest:
        """Remember a body read or stored under ``generation`` (if that is still current);
        returns the manifest to answer with."""
        manifest = Manifest(digest, media_type, len(body), body)
        if not self._watch.still(generation) or digest in self._items:
            return manifest
        if len(body) > self._limit // 4:
            return manifest
        self._items[digest] = manifest
        self._bytes += len(body)
        while self._bytes > self._limit:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.size
        return manifest


class Manifests:
    """The manifest policy and its memory of bodies; stored manifests are reported to
    ``on_stored`` (bytes on disk) for the storage limits."""

    def __init__(
        self,
        store: BlobStore,
        index: Index,
        presence: Presence,
        guard: StorageGuard,
        *,
        on_stored: Callable[[int], None],
        default_platform: Platform = DEFAULT_PLATFORM,
    ) -> None:
        self.store = store
        self.index = index
        self.default_platform = default_platform
        self._presence = presence
        self._guard = guard
        self._on_stored = on_stored
        self._memory = ManifestMemory(MANIFEST_MEMORY, index.generation)
        self._tag_checks: SingleFlight[tuple[str, str], ManifestInfo] = SingleFlight("tag checks")
        # Keyed by what is really fetched (repository and digest): a repository where the
        # digest is missing or slow never fails requests through another one.
        self._manifest_fetches: SingleFlight[tuple[str, Digest], Manifest] = SingleFlight(
            "manifest fetches"
        )
        # (repository key, tag) → (digest, deadline): a HEAD named the digest, not cached yet
        self._pending_tags: OrderedDict[tuple[str, str], tuple[Digest, float]] = OrderedDict()
        self._stale_log = ThrottledLog(log)  # once a minute per repository

    def forget(self, digests: list[Digest]) -> None:
        """Content left the cache (eviction): its bodies leave memory."""
        self._memory.discard(digests)

    async def cached(self, digest: Digest) -> Manifest | None:
        """The manifest as the cache holds it (from memory, or read and its digest
        checked), None if it is not cached or not sound; upstream is not asked."""
        return await self._cached_manifest(digest)

    async def manifest(
        self,
        route: Route,
        reference: Tag | Digest,
        accept: Accept,
        *,
        need_body: bool = True,
        outcome: Outcome | None = None,
    ) -> Manifest:
        """The manifest to answer with.

        By tag: always asks upstream (HEAD) which digest the tag points at now;
        on an upstream outage or rate limit, falls back to the last known mapping;
        an index is negotiated for ``accept``. By digest: exactly those bytes, never
        another manifest; from the cache when the digest is linked to the repository,
        else confirmed with (or fetched from) upstream under that repository.

        ``outcome`` is told how: by digest a hit, a miss (fetched) or coalesced (another
        request's fetch); by tag revalidated (upstream named a cached manifest), a miss,
        coalesced, or stale (upstream could not be asked).
        """
        outcome = outcome or Outcome()
        if accept.only_schema1:
            raise ManifestUnacceptable(
                "only schema1 manifests accepted: this mirror serves schema2 and OCI manifests"
            )
        if isinstance(reference, Digest):
            found = await self._by_digest(route, reference, outcome)
            self.index.touch(found.digest)
            return found
        manifest = await self._by_tag(route, reference.value, accept, need_body, outcome)
        served = await self._negotiate(route, manifest, accept, outcome)
        self.index.touch(served.digest)
        if served.digest != manifest.digest:
            self.index.touch(manifest.digest)
        return served

    async def refresh(self, route: Route, tag: str) -> Refreshed:
        """Revalidate ``tag`` with upstream now, whatever is cached: the manifest it names
        (and, for an index, every child manifest) fetched unless cached, then the tag set.
        Upstream errors are raised as they are (never a stale answer), and the tag is only
        moved once everything it names is stored: a failure leaves it as it was."""
        key = (route.key, tag)
        old = await self.index.get_tag(route.key, tag)
        info = await route.upstream.head_manifest(route.repo, tag)
        fetched: list[Digest] = []
        if info.digest is None:  # an upstream that announces no digest: by tag, hashed
            manifest = await self._fetch_manifest(route, tag, None, tag=None)
            fetched.append(manifest.digest)
        else:
            manifest = await self._refreshed(route, info.digest, fetched)
        if manifest.media_type in INDEX_TYPES and manifest.body is not None:
            try:
                children = parse_manifest(manifest.body, manifest.media_type).references
            except ManifestParseError as exc:
                raise UpstreamProtocolError(f"index {route}@{manifest.digest}: {exc}") from exc
            for child in children:
                await self._refreshed(route, child, fetched)
        if await self.index.get_manifest(manifest.digest) is None:
            raise StorageError(f"manifest {route}@{manifest.digest} could not be stored")
        self._pending_tags.pop(key, None)  # an older HEAD's answer must not come back
        await self._presence.ensure_linked(route, manifest.digest)
        await self.index.set_tag(route.key, tag, manifest.digest)
        return Refreshed(old, manifest, fetched)

    async def _refreshed(self, route: Route, digest: Digest, fetched: list[Digest]) -> Manifest:
        """A manifest for :meth:`refresh`, as a pull by digest gets it (a download under
        way joined); added to ``fetched`` unless it was cached."""
        outcome = Outcome()
        manifest = await self._by_digest(route, digest, outcome)
        if outcome.result is not CacheResult.HIT:
            fetched.append(digest)
        return manifest

    async def _by_tag(
        self, route: Route, tag: str, accept: Accept, need_body: bool, outcome: Outcome
    ) -> Manifest:
        """Revalidate the tag with upstream; if upstream cannot answer (down, timing out,
        rate limiting) at any step, the last manifest cached for the tag is served."""
        outcome.result = CacheResult.MISS  # until known better: upstream is asked
        try:
            return await self._revalidate(route, tag, accept, need_body, outcome)
        except UpstreamNotFound:
            await self._guard.record(self.index.delete_tag(route.key, tag))
            raise
        except (UpstreamUnavailable, UpstreamRateLimited) as exc:
            stale = await self._stale_by_tag(route, tag)
            if stale is None:
                raise
            self._log_stale(route, tag, exc)
            outcome.result = CacheResult.STALE
            return stale

    async def _revalidate(
        self, route: Route, tag: str, accept: Accept, need_body: bool, outcome: Outcome
    ) -> Manifest:
        info = await self._tag_checks.run(
            (route.key, tag), lambda: route.upstream.head_manifest(route.repo, tag)
        )
        if info.digest is None:
            # An upstream that does not announce digests on HEAD: fetch by tag and hash.
            outcome.result = CacheResult.MISS
            return await self._fetch_manifest(route, tag, None, tag=tag)
        cached = await self._cached_manifest(info.digest)
        if cached is not None:
            # Upstream just named it under this repository: linked, and the tag recorded
            # (whether the client asked with GET or, as Docker and containerd do, HEAD).
            await self._presence.ensure_linked(route, info.digest)
            await self._guard.record(self.index.set_tag(route.key, tag, info.digest))
            outcome.result = CacheResult.REVALIDATED
            return cached
        # Not cached: the tag is recorded once this digest is (see _store_manifest).
        self._expect_tag(route, tag, info.digest)
        answerable = accept.accepts(info.media_type) or accept.wildcard or not accept.types
        if not need_body and info.media_type not in INDEX_TYPES and info.size and answerable:
            outcome.result = CacheResult.MISS  # upstream's HEAD answers, nothing cached
            return Manifest(info.digest, info.media_type, info.size, None)
        return await self._by_digest(route, info.digest, outcome, tag=tag)

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
            await self._guard.record(self.index.set_tag(route.key, key[1], digest))

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

    async def _by_digest(
        self, route: Route, digest: Digest, outcome: Outcome, tag: str | None = None
    ) -> Manifest:
        cached = self._memory.get(digest)
        if cached is not None and self._presence.known(route, digest):
            outcome.result = CacheResult.HIT
            return cached  # the usual hit: from memory, linked here, nothing awaited
        if cached is None:
            cached = await self._cached_manifest(digest)
        if cached is not None:
            # Cached through another repository? Served here only if upstream has it
            # here too (a HEAD, no download); else MANIFEST_UNKNOWN (or the outage).
            await self._presence.check(route, digest, manifest=True)
            outcome.result = CacheResult.HIT
            return cached
        key = (route.key, digest)
        outcome.result = (
            CacheResult.COALESCED if key in self._manifest_fetches else CacheResult.MISS
        )
        return await self._manifest_fetches.run(
            key, lambda: self._fetch_manifest(route, str(digest), digest, tag=tag)
        )

    async def _cached_manifest(self, digest: Digest) -> Manifest | None:
        remembered = self._memory.get(digest)
        if remembered is not None:
            return remembered
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
        return self._memory.put(digest, record.media_type, stored, generation)

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
            await self._guard.record(self.index.set_tag(route.key, tag, actual))
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
            except IndexFailure:
                # Never leave a file the index does not know of (as for blobs).
                await self.store.delete(digest)
                raise
            self._on_stored(info.size)
            self._memory.put(digest, media_type, body, generation)
            # What the manifest references is served under this repository too.
            await self._presence.links.link(route.key, digest)
        except (StorageError, IndexFailure) as exc:
            self._guard.failing(exc)
            return False
        await self._settle_tags(route, digest)
        return True

    async def _negotiate(
        self, route: Route, manifest: Manifest, accept: Accept, outcome: Outcome
    ) -> Manifest:
        """The default platform's image manifest for a client that takes no index. The
        outcome is the tag's (revalidated, stale) unless the image had to be fetched."""
        if manifest.media_type not in INDEX_TYPES or accept.indexes:
            return manifest
        # A client that takes no index gets the default platform's image manifest.
        child_outcome = Outcome()
        body = manifest.body
        if body is None:
            manifest = await self._by_digest(route, manifest.digest, child_outcome)
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
        result = await self._by_digest(route, child[0], child_outcome)
        fetched = (CacheResult.MISS, CacheResult.COALESCED)
        if outcome.result is not CacheResult.STALE and child_outcome.result in fetched:
            outcome.result = child_outcome.result
        if result.media_type in INDEX_TYPES:
            raise ManifestUnacceptable("nested index for the default platform")
        return Manifest(
            result.digest, result.media_type, result.size, result.body, stale=manifest.stale
        )
