"""Operator commands on a cache (live or not): ls, du, prune, verify, warm.

They use the same store and index as the server; SQLite (WAL) and the atomic store
make them safe to run beside a running server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

from registry_mirror.index import CacheSnapshot, SQLiteIndex
from registry_mirror.media_types import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    ManifestParseError,
    Platform,
    parse_manifest,
)
from registry_mirror.mirror.eviction import EvictionPlan, apply_plan, images_of, plan_eviction
from registry_mirror.reference import Digest, parse_digest
from registry_mirror.storage import FilesystemBlobStore

__all__ = [
    "Cache",
    "CacheMissing",
    "EvictionPlan",
    "Problem",
    "RepoTag",
    "UsageReport",
    "WarmResult",
    "list_tags",
    "plan_prune",
    "prune",
    "usage",
    "verify",
    "warm",
]

ORPHAN_GRACE: Final = 60.0  # a file this young may be a commit whose index row is on its way
HASH_CHUNK: Final = 1024 * 1024


class CacheMissing(Exception):
    """No cache at the given root."""


class Cache:
    """A cache root opened for an operator command."""

    def __init__(self, root: Path) -> None:
        if not (root / "index.db").is_file() or not (root / "blobs").is_dir():
            raise CacheMissing(f"no registry-mirror cache at {root} (no index.db and blobs/)")
        self.root = root
        self.store = FilesystemBlobStore(root)
        self.index = SQLiteIndex(root / "index.db")

    async def __aenter__(self) -> Cache:
        await self.index.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.index.close()
        await self.store.close()


@dataclass(frozen=True, slots=True)
class RepoTag:
    repository: str
    tag: str
    digest: str
    size: int
    last_use: float
    hits: int
    complete: bool  # every referenced blob is cached


def closure(snapshot: CacheSnapshot, root: str) -> set[str]:
    members: set[str] = set()
    stack = [root]
    while stack:
        current = stack.pop()
        if current in members:
            continue
        members.add(current)
        stack.extend(snapshot.refs.get(current, ()))
    return members


def list_tags(snapshot: CacheSnapshot) -> list[RepoTag]:
    rows = []
    for repo, tag, digest in snapshot.tags:
        members = closure(snapshot, digest)
        present = [snapshot.items[m] for m in members if m in snapshot.items]
        manifest = snapshot.items.get(digest)
        rows.append(
            RepoTag(
                repo,
                tag,
                digest,
                size=sum(item.size for item in present),
                last_use=manifest.last_access if manifest else 0.0,
                hits=manifest.hits if manifest else 0,
                complete=len(present) == len(members),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class UsageReport:
    disk_bytes: int  # measured on the filesystem
    indexed_bytes: int
    blobs: int
    manifests: int
    shared_bytes: int  # content referenced by more than one image
    unique_bytes: int
    free_bytes: int | None
    repositories: int


async def usage(cache: Cache) -> UsageReport:
    snapshot = await cache.index.snapshot()
    holders: dict[str, int] = {}
    for image in images_of(snapshot):
        for member in image.members:
            holders[member] = holders.get(member, 0) + 1
    shared = sum(item.size for d, item in snapshot.items.items() if holders.get(d, 0) > 1)
    indexed = sum(item.size for item in snapshot.items.values())
    return UsageReport(
        disk_bytes=await cache.store.disk_usage(),
        indexed_bytes=indexed,
        blobs=sum(1 for item in snapshot.items.values() if item.media_type is None),
        manifests=sum(1 for item in snapshot.items.values() if item.media_type is not None),
        shared_bytes=shared,
        unique_bytes=indexed - shared,
        free_bytes=await cache.store.free_space(),
        repositories=len({repo for repo, _, _ in snapshot.tags} | set(snapshot.content)),
    )


async def plan_prune(
    cache: Cache,
    *,
    older_than: float | None,
    to_size: int | None,
    repositories: list[str],
) -> EvictionPlan:
    """What ``prune`` removes: images idle for ``older_than``, then LRU images until the
    cache is down to ``to_size``; limited to images of ``repositories`` when given."""
    snapshot = await cache.index.snapshot()
    need = 0
    if to_size is not None:
        need = max(0, await cache.store.disk_usage() - to_size)
    only = None
    if repositories:
        wanted: set[str] = set()
        for key in {r for r, _, _ in snapshot.tags} | set(snapshot.content):
            # docker.io/library/alpine may be named in full or as library/alpine
            if key in repositories or key.partition("/")[2] in repositories:
                wanted |= snapshot.content.get(key, set())
                wanted |= {digest for r, _, digest in snapshot.tags if r == key}
        only = lambda image: image.root in wanted  # noqa: E731
        if older_than is None and to_size is None:
            need = 1 << 62  # everything of those repositories
    sizes = await cache.store.disk_sizes([parse_digest(d) for d in snapshot.items])
    return plan_eviction(
        snapshot, need=need, now=time.time(), max_idle=older_than, only=only, sizes=sizes
    )


async def prune(cache: Cache, plan: EvictionPlan) -> int:
    _, files = await apply_plan(plan, cache.index, cache.store)
    return files


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # corrupt, missing, orphan, dangling-tag, staging
    digest: str
    detail: str


async def verify(
    cache: Cache,
    *,
    repair: bool,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Problem], int]:
    """Re-hash every cached blob and manifest; find missing files, files the index does
    not know, tags naming absent manifests and leftovers of interrupted writes.
    With ``repair``, remove them all (so they are fetched again). Returns the problems
    and the number of bytes hashed."""
    snapshot = await cache.index.snapshot()
    problems: list[Problem] = []
    on_disk = {str(d) async for d in cache.store.iter_digests()}
    hashed = 0

    for digest, item in snapshot.items.items():
        if digest not in on_disk:
            problems.append(Problem("missing", digest, "indexed but no file"))
            continue
        path = cache.store.path_for(parse_digest(digest))
        ok, length = await cache.store.verify(parse_digest(digest), progress)
        hashed += length
        if not ok:
            problems.append(
                Problem("corrupt", digest, f"content does not hash to its name ({length} bytes)")
            )
        elif length != item.size:
            problems.append(Problem("corrupt", digest, f"{length} bytes, index says {item.size}"))
        elif item.media_type is not None:
            body = await asyncio.to_thread(path.read_bytes)
            try:
                parse_manifest(body, item.media_type)
            except ManifestParseError as exc:
                problems.append(Problem("corrupt", digest, f"manifest unreadable: {exc}"))
    now = time.time()
    for digest in sorted(on_disk - set(snapshot.items)):
        path = cache.store.path_for(parse_digest(digest))
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        if age > ORPHAN_GRACE:
            problems.append(Problem("orphan", digest, "file the index does not know"))
    for repo, tag, digest in snapshot.tags:
        if digest not in snapshot.items:
            problems.append(
                Problem("dangling-tag", digest, f"{repo}:{tag} names no cached manifest")
            )
    for entry in (
        sorted(cache.store.staging_dir.iterdir()) if cache.store.staging_dir.is_dir() else []
    ):
        if now - entry.stat().st_mtime > ORPHAN_GRACE:
            problems.append(Problem("staging", entry.name, "leftover of an interrupted download"))

    if repair and problems:
        await _repair(cache, problems)
    return problems, hashed


async def _repair(cache: Cache, problems: list[Problem]) -> None:
    rows = [p.digest for p in problems if p.kind in ("corrupt", "missing", "dangling-tag")]
    await cache.index.remove(rows)
    for problem in problems:
        if problem.kind in ("corrupt", "orphan"):
            await cache.store.delete(parse_digest(problem.digest))
        elif problem.kind == "staging":
            leftover = cache.store.staging_dir / problem.digest
            await asyncio.to_thread(leftover.unlink, missing_ok=True)


# --- warm -------------------------------------------------------------------------


@dataclass
class WarmResult:
    image: str
    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    error: str | None = None
    platforms: list[str] = field(default_factory=list)


def split_image(ref: str) -> tuple[str, str]:
    """``alpine:3.20`` → (``alpine``, ``3.20``); ``x/y@sha256:…`` → (``x/y``, digest).
    A registry host in front (``ghcr.io/x/y``) stays part of the path; the mirror
    routes it."""
    if "@" in ref:
        name, _, reference = ref.partition("@")
        parse_digest(reference)
        return name, reference
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = ref.rpartition(":")
        return name, tag
    return ref, "latest"


async def warm(
    mirror_url: str,
    images: Iterable[str],
    *,
    platforms: list[Platform] | None,
    concurrency: int,
    on_bytes: Callable[[int], None] | None = None,
    on_image: Callable[[WarmResult], None] | None = None,
) -> list[WarmResult]:
    """Pull images through a running mirror (its own cache logic fills the cache),
    checking and discarding the bytes. Safe to re-run: what is cached is a fast hit."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(
        mirror_url.rstrip("/"), timeout=timeout, auto_decompress=False
    ) as session:
        warmer = _Warmer(session, asyncio.Semaphore(concurrency), platforms, on_bytes)

        async def one(ref: str) -> WarmResult:
            result = WarmResult(ref)
            try:
                name, reference = split_image(ref)
                await warmer.manifest(name, reference, result, top=True)
            except (aiohttp.ClientError, TimeoutError, WarmError, ValueError) as exc:
                result.error = str(exc) or type(exc).__name__
            if on_image is not None:
                on_image(result)
            return result

        return list(await asyncio.gather(*(one(ref) for ref in images)))


class WarmError(Exception):
    """An image that could not be warmed (told in the summary)."""


@dataclass
class _Warmer:
    session: aiohttp.ClientSession
    semaphore: asyncio.Semaphore
    platforms: list[Platform] | None
    on_bytes: Callable[[int], None] | None

    async def manifest(
        self, name: str, reference: str, result: WarmResult, *, top: bool = False
    ) -> None:
        async with (
            self.semaphore,
            self.session.get(
                f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
            ) as response,
        ):
            body = await response.read()
            if response.status != 200:
                raise WarmError(f"{name}:{reference}: {response.status} {_error_text(body)}")
            media_type = response.headers.get("Content-Type", "").split(";")[0]
        result.manifests += 1
        try:
            parsed = parse_manifest(body, media_type)
        except ManifestParseError as exc:
            raise WarmError(f"{name}:{reference}: {exc}") from exc
        if media_type in INDEX_TYPES:
            if not top:
                raise WarmError(f"{name}:{reference}: nested index")
            children = [
                (platform, digest)
                for platform, digest, _ in parsed.platforms
                if self.platforms is None or any(_matches(platform, p) for p in self.platforms)
            ]
            if not children:
                raise WarmError(f"{name}:{reference}: no manifest for the platforms asked")
            await asyncio.gather(
                *(self.manifest(name, str(digest), result) for _, digest in children)
            )
            result.platforms = sorted(str(platform) for platform, _ in children)
            return
        await asyncio.gather(*(self.blob(name, digest, result) for digest in parsed.references))

    async def blob(self, name: str, digest: Digest, result: WarmResult) -> None:
        async with self.semaphore, self.session.get(f"/v2/{name}/blobs/{digest}") as response:
            if response.status != 200:
                text = _error_text(await response.read())
                raise WarmError(f"{name}@{digest}: {response.status} {text}")
            hasher = digest.hasher()
            async for chunk in response.content.iter_chunked(1024 * 1024):
                hasher.update(chunk)
                result.bytes += len(chunk)
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
            if hasher.hexdigest() != digest.hex:
                raise WarmError(f"{name}@{digest}: content does not match its digest")
        result.blobs += 1


def _matches(have: Platform, want: Platform) -> bool:
    return (have.os, have.architecture) == (want.os, want.architecture) and (
        want.variant is None or have.variant == want.variant
    )


def _error_text(body: bytes) -> str:
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e['code']}: {e['message']}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
