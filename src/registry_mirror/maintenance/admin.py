"""The admin actions on one image: is it cached (``inspect``), revalidate its tag with
upstream now (``refresh``), forget a tag or an image (``forget``).

One module, two thin faces over it: the HTTP endpoints of the running server
(:mod:`registry_mirror.api.admin`) and the command line beside it or without it
(:mod:`registry_mirror.maintenance.admin_commands`). Images are named as clients name
them and resolved by the server's :class:`Router` (Docker Hub's ``library/``, the
registries of ``upstreams:``, their aliases). Every action is logged at INFO: who,
what, and the result (a failure included).

Beside the server, the command line changes the index the server reads: it tells the
server afterwards to forget what it remembers of it (``Cache.changed``, the
generation), as ``prune`` does. In the server the same calls update its own memories.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Final

from registry_mirror.index import CacheItem
from registry_mirror.maintenance.cache import Cache
from registry_mirror.maintenance.prune import apply_prune, plan_forget
from registry_mirror.maintenance.warm import split_image
from registry_mirror.media_types import (
    INDEX_TYPES,
    ManifestParseError,
    ParsedManifest,
    parse_manifest,
)
from registry_mirror.mirror.manifests import Manifest, Manifests
from registry_mirror.mirror.routing import Route, Router
from registry_mirror.reference import (
    Digest,
    InvalidReference,
    parse_digest,
    parse_reference,
    parse_repo_name,
)

__all__ = [
    "MAX_IMAGE_LENGTH",
    "AdminActions",
    "BadImage",
    "BlobState",
    "ForgetResult",
    "ImageRef",
    "ImageReport",
    "ManifestState",
    "NeedsTag",
    "NotCached",
    "RefreshResult",
    "parse_image",
]

log = logging.getLogger(__name__)

MAX_IMAGE_LENGTH: Final = 512  # a name (255) and a digest (sha512) fit


class BadImage(ValueError):
    """The text is no image reference (``[registry/]repository[:tag|@digest]``)."""


class NeedsTag(ValueError):
    """Refresh revalidates a tag: a digest names content that never changes."""


class NotCached(LookupError):
    """Nothing is cached under that name (what ``forget`` was asked to remove)."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image reference, resolved: the route (upstream, cache key) and a tag or digest."""

    route: Route
    tag: str | None
    digest: Digest | None

    def __str__(self) -> str:
        return f"{self.route.key}:{self.tag}" if self.tag else f"{self.route.key}@{self.digest}"


def parse_image(text: str, router: Router) -> ImageRef:
    """``alpine``, ``alpine:3.20``, ``ghcr.io/o/i@sha256:…`` as a client would pull it;
    raises :class:`BadImage`, or the router's ``RegistryNotMirrored`` / ``RepositoryDenied``."""
    if not text or len(text) > MAX_IMAGE_LENGTH or not text.isprintable():
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise BadImage(f"not an image reference: {shown!r}")
    try:
        name, reference = split_image(text)
        repo = parse_repo_name(name)
        parsed = parse_reference(reference)
    except InvalidReference as exc:
        raise BadImage(f"{exc.message} in image {text[:80]!r}") from None
    route = router.resolve(repo)
    if isinstance(parsed, Digest):
        return ImageRef(route, None, parsed)
    return ImageRef(route, parsed.value, None)


@dataclass(frozen=True, slots=True)
class BlobState:
    digest: str
    size: int  # as the manifest gives it
    cached: bool


@dataclass(frozen=True, slots=True)
class ManifestState:
    """An image manifest of the image (one per platform of an index)."""

    digest: str
    platform: str | None  # from the index; None for a single image manifest
    cached: bool
    media_type: str | None = None
    blobs: list[BlobState] | None = None  # config and layers; None: unknown (not cached)


@dataclass(slots=True)
class ImageReport:
    """What the cache holds of an image, from the cache alone (upstream is not asked)."""

    image: str  # as asked
    repository: str  # as clients name it (``library/alpine``, ``ghcr.io/o/i``)
    key: str  # the cache key (``docker.io/library/alpine``)
    tag: str | None
    digest: str | None  # the tag's cached manifest, or the digest asked
    cached: bool = False  # the manifest is cached
    linked: bool = False  # cached under this repository (else through another one)
    media_type: str | None = None
    manifests: list[ManifestState] = field(default_factory=list)
    blobs: int = 0
    blobs_cached: int = 0
    total_bytes: int = 0  # of the blobs the cached manifests name
    cached_bytes: int = 0
    complete: bool = False  # every manifest and blob is cached
    last_use: float | None = None  # the manifest's last pull (or when it was cached)
    hits: int = 0


@dataclass(frozen=True, slots=True)
class RefreshResult:
    image: str
    repository: str
    tag: str
    old: str | None  # the cached digest before (None: not cached)
    new: str
    changed: bool
    media_type: str
    fetched: list[str]  # manifests fetched from upstream for it


@dataclass(frozen=True, slots=True)
class ForgetResult:
    image: str
    repository: str
    digest: str
    tags: list[str]  # the tags removed
    images: int  # images removed with their content
    files: int  # files removed
    freed: int  # bytes on disk
    kept: int  # files kept: another image, repository or tag still uses them
    in_use: int  # files kept because a client is downloading them right now
    still_tagged: list[str]  # the image stays: these tags of the repository name it


class AdminActions:
    """The actions over an open cache and the server's naming. ``manifests`` is the
    manifest policy that refreshes a tag (the server's own, or one over ``cache`` for
    the command line); ``in_use`` the digests being served (never removed under a
    client); ``on_removed`` told what went, the files removed and the bytes they freed;
    ``beside_server``: this process is not the server, which must be told of each change."""

    def __init__(
        self,
        cache: Cache,
        router: Router,
        manifests: Manifests,
        *,
        in_use: Callable[[], Collection[Digest]] = tuple,
        on_removed: Callable[[list[Digest], int, int], None] | None = None,
        beside_server: bool = False,
    ) -> None:
        self.cache = cache
        self.router = router
        self.manifests = manifests
        self._in_use = in_use
        self._on_removed = on_removed
        self._beside_server = beside_server
        # One mutation at a time in this process: the operators' lock is a POSIX record
        # lock, which a process holds once however many times it takes it.
        self._changing = asyncio.Lock()

    def parse(self, image: str) -> ImageRef:
        return parse_image(image, self.router)

    # --- inspect -----------------------------------------------------------------------

    async def inspect(self, image: str, *, who: str) -> ImageReport:
        async with _logged("inspect", image, who):
            report = await self._inspect(image)
            log.info(
                "admin inspect %s by %s: %s",
                image[:MAX_IMAGE_LENGTH],
                who,
                f"{report.digest}, {report.blobs_cached} of {report.blobs} blobs cached"
                if report.cached
                else "not cached",
            )
            return report

    async def _inspect(self, image: str) -> ImageReport:
        ref = self.parse(image)
        key = ref.route.key
        index = self.cache.index
        digest = ref.digest if ref.digest is not None else await index.get_tag(key, ref.tag or "")
        report = ImageReport(
            image, self.router.display(key), key, ref.tag, None if digest is None else str(digest)
        )
        top = None if digest is None else await self._read(digest)
        if digest is None or top is None:
            return report
        manifest, parsed = top
        report.cached, report.media_type = True, manifest.media_type
        report.linked = await index.linked(key, digest)
        if manifest.media_type in INDEX_TYPES:
            platforms = {d: str(p) for p, d, _ in parsed.platforms}
            for child in parsed.references:
                report.manifests.append(
                    await self._image_manifest(child, platforms.get(child), await self._read(child))
                )
        else:
            report.manifests.append(await self._image_manifest(digest, None, top))
        complete = True
        for state in report.manifests:
            if state.blobs is None:
                complete = False
                continue
            for blob in state.blobs:
                report.blobs += 1
                report.total_bytes += blob.size
                if blob.cached:
                    report.blobs_cached += 1
                    report.cached_bytes += blob.size
        report.complete = complete and report.blobs == report.blobs_cached
        item = (await index.items([digest])).get(digest)
        if item is not None:
            report.last_use, report.hits = item.last_access, item.hits
        return report

    async def _image_manifest(
        self, digest: Digest, platform: str | None, found: tuple[Manifest, ParsedManifest] | None
    ) -> ManifestState:
        if found is None:
            return ManifestState(str(digest), platform, False)
        manifest, parsed = found
        assert manifest.body is not None  # a cached manifest has its body
        sizes = _sizes(manifest.body)
        references = parsed.references
        rows: dict[Digest, CacheItem] = await self.cache.index.items(references)
        blobs = [
            BlobState(
                str(ref),
                rows[ref].size if ref in rows else sizes.get(ref, 0),
                ref in rows,
            )
            for ref in references
        ]
        return ManifestState(str(digest), platform, True, manifest.media_type, blobs)

    async def _read(self, digest: Digest) -> tuple[Manifest, ParsedManifest] | None:
        """A cached manifest, parsed, if it is cached and sound (as the server reads it)."""
        manifest = await self.manifests.cached(digest)
        if manifest is None or manifest.body is None:
            return None
        try:
            return manifest, parse_manifest(manifest.body, manifest.media_type)
        except ManifestParseError:
            return None

    # --- refresh -----------------------------------------------------------------------

    async def refresh(self, image: str, *, who: str) -> RefreshResult:
        """Revalidate the tag with upstream now; a failure (upstream down) leaves the
        cache as it was, and is raised as the upstream's error."""
        async with _logged("refresh", image, who):
            ref = self.parse(image)
            if ref.tag is None:
                raise NeedsTag(f"{image[:80]!r} names a digest: refresh takes a tag")
            refreshed = await self.manifests.refresh(ref.route, ref.tag)
            if self._beside_server:
                await self.cache.changed()
            old = None if refreshed.old is None else str(refreshed.old)
            result = RefreshResult(
                image,
                self.router.display(ref.route.key),
                ref.tag,
                old,
                str(refreshed.new.digest),
                old != str(refreshed.new.digest),
                refreshed.new.media_type,
                [str(d) for d in refreshed.fetched],
            )
            log.info(
                "admin refresh %s by %s: %s → %s (%d manifests fetched)",
                ref,
                who,
                result.old or "not cached",
                result.new,
                len(result.fetched),
            )
            return result

    # --- forget ------------------------------------------------------------------------

    async def forget(self, image: str, *, who: str, tag_only: bool = False) -> ForgetResult:
        """Remove the tag (``repo:tag``) or every tag of the repository naming the digest
        (``repo@digest``), then the image and the content only it uses, as ``prune``
        removes it: what another image, repository or tag uses stays, and so does what a
        client is downloading. ``tag_only``: the image stays."""
        async with _logged("forget", image, who):
            ref = self.parse(image)
            async with self._changing, self.cache.removing() as changed:
                result = await self._forget(ref, image, changed, tag_only)
            log.info(
                "admin forget %s by %s: %d tags, %d images, %d files, %d bytes freed%s%s",
                ref,
                who,
                len(result.tags),
                result.images,
                result.files,
                result.freed,
                f"; {result.kept + result.in_use} files kept ({result.in_use} being downloaded)"
                if result.kept or result.in_use
                else "",
                f"; still tagged {', '.join(result.still_tagged)}" if result.still_tagged else "",
            )
            return result

    async def _forget(
        self,
        ref: ImageRef,
        image: str,
        changed: Callable[[], Awaitable[None]],
        tag_only: bool,
    ) -> ForgetResult:
        key = ref.route.key
        index = self.cache.index
        display = self.router.display(key)
        tags: list[str] = []
        if ref.tag is not None:
            digest = await index.get_tag(key, ref.tag)
            if digest is None:
                raise NotCached(f"{display}:{ref.tag} is not cached")
            await index.delete_tag(key, ref.tag)
            await changed()
            tags.append(f"{display}:{ref.tag}")
        else:
            assert ref.digest is not None
            digest = ref.digest
            if not await index.linked(key, digest):
                raise NotCached(f"{display}@{digest} is not cached")
        result = ForgetResult(image, display, str(digest), tags, 0, 0, 0, 0, 0, [])
        if tag_only:
            return result
        plan = await plan_forget(self.cache, key, digest, in_use=set(self._in_use()))
        named = [self.router.display(name) for name in plan.names.get(digest, [])]
        if ref.tag is not None and named:
            result.still_tagged.extend(named)  # another tag still names the image
            return result
        result.tags.extend(named)
        outcome, gone = await apply_prune(self.cache, plan, changed)
        if self._on_removed is not None:
            self._on_removed(gone, outcome.files, outcome.freed)
        return ForgetResult(
            image,
            display,
            str(digest),
            result.tags,
            outcome.images,
            outcome.files,
            outcome.freed,
            plan.kept + outcome.kept,
            len(plan.busy),
            [],
        )


@contextlib.asynccontextmanager
async def _logged(action: str, image: str, who: str) -> AsyncIterator[None]:
    """A failed action is logged too (a success logs its own result)."""
    try:
        yield
    except Exception as exc:
        log.info("admin %s %s by %s failed: %s", action, image[:MAX_IMAGE_LENGTH], who, exc)
        raise


def _sizes(body: bytes) -> dict[Digest, int]:
    """The sizes a (parsed, valid) manifest gives its config, layers or child manifests."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    entries = [doc.get("config"), *(doc.get("layers") or []), *(doc.get("manifests") or [])]
    sizes: dict[Digest, int] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        size, text = entry.get("size"), entry.get("digest")
        if isinstance(size, int) and isinstance(text, str):
            with contextlib.suppress(InvalidReference):
                sizes[parse_digest(text)] = size
    return sizes
