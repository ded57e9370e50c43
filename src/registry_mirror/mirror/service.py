"""The pull-through mirror: a thin facade over manifests, blobs and tag lists, so the
API sees one object. The parts share the repository links (:mod:`presence`), the
guard against a failing store or index, and the pins that keep content in use from
the evictor, which is built (and started, and stopped) by the composition root."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager

from registry_mirror.index import Index
from registry_mirror.media_types import Accept, Platform
from registry_mirror.metrics import Metrics
from registry_mirror.mirror.blobs import Blobs, BlobSource, Pins
from registry_mirror.mirror.eviction import Evictor
from registry_mirror.mirror.guard import StorageGuard
from registry_mirror.mirror.links import RepoLinks
from registry_mirror.mirror.manifests import DEFAULT_PLATFORM, Manifest, Manifests
from registry_mirror.mirror.presence import Presence
from registry_mirror.mirror.recovery import adopt_orphans
from registry_mirror.mirror.routing import Route, Router
from registry_mirror.mirror.tag_lists import TagListing, TagLists
from registry_mirror.outcome import Outcome
from registry_mirror.reference import Digest, RepoName, Tag
from registry_mirror.storage import BlobStore

__all__ = ["Mirror"]


class Mirror:
    def __init__(
        self,
        store: BlobStore,
        index: Index,
        router: Router,
        evictor: Evictor,
        pins: Pins,
        *,
        default_platform: Platform = DEFAULT_PLATFORM,
        max_fetches: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.router = router
        self.evictor = evictor
        self._pins = pins
        guard = StorageGuard()
        self._links = RepoLinks(index)
        presence = Presence(self._links, guard)
        self.manifests = Manifests(
            store,
            index,
            presence,
            guard,
            on_stored=evictor.added,
            default_platform=default_platform,
        )
        self.blobs = Blobs(
            store,
            index,
            presence,
            guard,
            pins,
            on_stored=evictor.added,
            max_fetches=max_fetches,
            metrics=metrics,
        )
        self._tag_lists = TagLists(index)
        evictor.on_evict.append(self._evicted)
        self._recovery: asyncio.Task[object] | None = None

    def __repr__(self) -> str:
        return f"<Mirror {self.router!r} {self.blobs!r}>"

    async def start(self) -> None:
        """Recover what a crash left unindexed, in the background."""
        self._recovery = asyncio.create_task(
            adopt_orphans(self.store, self.index, self._pins.__contains__)
        )

    @property
    def recovering(self) -> bool:
        """Files a crash left unindexed are still being checked."""
        return self._recovery is not None and not self._recovery.done()

    def downloads(self) -> int:
        """Upstream downloads (fills) in progress."""
        return self.blobs.downloads

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        await self.blobs.close()

    def _evicted(self, digests: list[Digest]) -> None:
        self.manifests.forget(digests)
        self._links.forget(digests)

    def removed(self, digests: list[Digest], freed: int) -> None:
        """Content was removed on an operator's demand (an admin action): forgotten as an
        eviction is, its files and their ``freed`` bytes on disk no longer counted."""
        self._evicted(digests)
        self.evictor.released(freed, len(digests))

    def in_use(self) -> list[Digest]:
        """The digests being served or written now (pinned): never removed under a client."""
        return self._pins.pinned()

    def route(self, name: RepoName, namespace: str | None = None) -> Route:
        """Which upstream and repository a client's name means (see :mod:`routing`)."""
        return self.router.resolve(name, namespace)

    async def manifest(
        self,
        route: Route,
        reference: Tag | Digest,
        accept: Accept,
        *,
        need_body: bool = True,
        outcome: Outcome | None = None,
    ) -> Manifest:
        return await self.manifests.manifest(
            route, reference, accept, need_body=need_body, outcome=outcome
        )

    async def blob(
        self, route: Route, digest: Digest, outcome: Outcome | None = None
    ) -> BlobSource:
        return await self.blobs.blob(route, digest, outcome)

    async def blob_size(
        self, route: Route, digest: Digest, outcome: Outcome | None = None
    ) -> int | None:
        return await self.blobs.blob_size(route, digest, outcome)

    def hold(self, digest: Digest) -> AbstractContextManager[None]:
        """Keep a blob from eviction while it is served."""
        return self._pins.hold(digest)

    async def tags(
        self, route: Route, *, fresh: bool = True, outcome: Outcome | None = None
    ) -> TagListing:
        return await self._tag_lists.tags(route, fresh=fresh, outcome=outcome)

    async def catalog_keys(self) -> list[tuple[str, str]]:
        """Cached repositories: (as clients name them, cache key), e.g.
        (``ghcr.io/o/i``, ``ghcr.io/o/i``) and (``library/x``, ``docker.io/library/x``)."""
        keys = await self.index.repositories()
        return sorted((self.router.display(key), key) for key in keys)
