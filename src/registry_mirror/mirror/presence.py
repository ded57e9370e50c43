"""Whether a digest may be served under a repository: linked there in the index, or
confirmed there by upstream (a ``HEAD``, no download) and linked from then on."""

from __future__ import annotations

from registry_mirror.index import IndexFailure
from registry_mirror.mirror.guard import StorageGuard
from registry_mirror.mirror.links import RepoLinks
from registry_mirror.mirror.routing import Route
from registry_mirror.mirror.singleflight import SingleFlight
from registry_mirror.reference import Digest
from registry_mirror.upstream import UpstreamDigestMismatch

__all__ = ["Presence"]


class Presence:
    def __init__(self, links: RepoLinks, guard: StorageGuard) -> None:
        self.links = links
        self._guard = guard
        self._confirms: SingleFlight[tuple[str, str, Digest], None] = SingleFlight("confirms")

    def known(self, route: Route, digest: Digest) -> bool:
        """Whether ``digest`` is linked to ``route`` as far as memory tells (no index
        read, nothing awaited): if so, :meth:`check` would return at once."""
        return self.links.remembered(route.key, digest)

    async def check(self, route: Route, digest: Digest, *, manifest: bool) -> None:
        """Return if ``digest`` is linked to ``route`` or upstream confirms it there
        (then linked); raises the upstream's error otherwise (UpstreamNotFound)."""
        if not await self.links.linked(route.key, digest):
            await self.confirm(route, digest, manifest=manifest)

    async def confirm(self, route: Route, digest: Digest, *, manifest: bool) -> None:
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
            await self.ensure_linked(route, digest)

        await self._confirms.run((route.key, "m" if manifest else "b", digest), ask)

    async def ensure_linked(self, route: Route, digest: Digest) -> None:
        """Link ``digest`` (and what it references) to the route; cheap when it is."""
        if await self.links.linked(route.key, digest):
            return
        try:
            await self.links.link(route.key, digest)
        except IndexFailure as exc:
            self._guard.failing(exc)  # asked upstream again next time; still served now
