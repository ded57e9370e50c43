"""Operator commands on a cache (live or not): ls, du, prune, verify, warm.

They use the same store and index as the server; SQLite (WAL) and the atomic store
make them safe to run beside a running server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiohttp

from registry_mirror.config import Settings, redact_url
from registry_mirror.index import CacheSnapshot, SQLiteIndex
from registry_mirror.media_types import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    ManifestParseError,
    Platform,
    parse_manifest,
)
from registry_mirror.mirror.eviction import EvictionPlan, images_of, plan_eviction
from registry_mirror.reference import Digest, parse_digest
from registry_mirror.rootlock import bump_generation, operator_lock
from registry_mirror.storage import FilesystemBlobStore

__all__ = [
    "Cache",
    "CacheMissing",
    "EvictionPlan",
    "MirrorAccess",
    "Naming",
    "NothingMatches",
    "Problem",
    "PrunePlan",
    "PruneResult",
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


class NothingMatches(Exception):
    """A repository pattern given to ``prune`` names no cached repository."""


class Cache:
    """A cache root opened for an operator command.

    Read-only commands (``ls``, ``du``, ``verify``) run beside the server as they are.
    Commands that remove content do it in :meth:`removing`: one such command at a time,
    each index transaction small and re-checked inside (nothing a server committed
    meanwhile is removed), and the server told after each one to forget what it
    remembers of the index (see :mod:`registry_mirror.rootlock`)."""

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

    @contextlib.asynccontextmanager
    async def removing(self) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Hold the operators' lock; yields ``changed()``, to call after each removal."""

        async def changed() -> None:
            await asyncio.to_thread(bump_generation, self.root)

        lock = operator_lock(self.root)
        await asyncio.to_thread(lock.__enter__)
        try:
            await changed()
            yield changed
        finally:
            await changed()
            await asyncio.to_thread(lock.__exit__, None, None, None)


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


@dataclass(frozen=True, slots=True)
class Naming:
    """Repository names as ``ls`` shows them and a person types them: ``alpine`` and
    ``library/alpine`` on the default registry (Docker Hub naming), ``ghcr.io/o/i`` (or an
    alias) for the others, ``docker.io/library/alpine`` in full."""

    default: str = "docker.io"
    names: dict[str, str] = field(default_factory=lambda: {"docker.io": "docker.io"})
    dockerhub: frozenset[str] = frozenset({"docker.io"})

    @classmethod
    def from_settings(cls, settings: Settings) -> Naming:
        names: dict[str, str] = {}
        dockerhub = {"docker.io"}
        for upstream in settings.all_upstreams():
            for name in upstream.registry_names:
                names[name] = upstream.registry_name
            if upstream.is_dockerhub:
                dockerhub.add(upstream.registry_name)
        return cls(settings.proxy.registry_name, names, frozenset(dockerhub))

    def key(self, pattern: str) -> str:
        """The cache key (``registry/repository``) a pattern means."""
        first, sep, rest = pattern.partition("/")
        if sep and first.lower() in self.names:
            registry, repo = self.names[first.lower()], rest
        elif sep and ("." in first or ":" in first or first == "localhost"):
            registry, repo = first.lower(), rest
        else:
            registry, repo = self.default, pattern
        if registry in self.dockerhub and "/" not in repo:
            repo = f"library/{repo}"
        return f"{registry}/{repo}"


@dataclass(slots=True)
class PrunePlan:
    """What ``prune`` removes (files and rows, in order), and which repositories only
    lose their tags and links because another repository still uses the content."""

    removal: EvictionPlan
    scope: list[str] | None  # the repositories pruned; None: all
    unlink: list[str] = field(default_factory=list)  # digests those repositories let go of
    kept: int = 0  # planned files kept because another repository or image uses them
    names: dict[str, list[str]] = field(default_factory=dict)  # image → repo:tag

    def __bool__(self) -> bool:
        return bool(self.removal.digests or self.unlink)


async def plan_prune(
    cache: Cache,
    *,
    older_than: float | None,
    to_size: int | None,
    repositories: list[str],
    naming: Naming | None = None,
) -> PrunePlan:
    """What ``prune`` removes: images idle for ``older_than``, then LRU images until the
    cache is down to ``to_size``; limited to images of ``repositories`` when given.
    Content another repository (or another image) uses stays: the pruned repositories
    only lose their tags and links to it. A pattern matching nothing raises
    :class:`NothingMatches`."""
    naming = naming or Naming()
    snapshot = await cache.index.snapshot()
    need = 0
    if to_size is not None:
        need = max(0, await cache.store.disk_usage() - to_size)
    scope: list[str] | None = None
    only = None
    if repositories:
        cached = {r for r, _, _ in snapshot.tags} | set(snapshot.content)
        scope = []
        for pattern in repositories:
            key = naming.key(pattern)
            matched = sorted(r for r in cached if fnmatch.fnmatchcase(r, key))
            if not matched:
                raise NothingMatches(f"{pattern!r} ({key}) matches no cached repository")
            scope += [r for r in matched if r not in scope]
        inside = set(scope)
        wanted = _held_by(snapshot, inside)
        elsewhere = _held_by(snapshot, (set(snapshot.content) | cached) - inside)
        only = lambda image: image.root in wanted and image.root not in elsewhere  # noqa: E731
        if older_than is None and to_size is None:
            need = 1 << 62  # everything of those repositories
    sizes = await cache.store.disk_sizes([parse_digest(d) for d in snapshot.items])
    planned = plan_eviction(
        snapshot, need=need, now=time.time(), max_idle=older_than, only=only, sizes=sizes
    )
    removal, kept = _still_used(snapshot, planned, scope, sizes)
    plan = PrunePlan(removal, scope, kept=kept)
    held: set[str] = set()
    if scope is not None:
        inside = set(scope)
        if older_than is None and to_size is None:
            held = _held_by(snapshot, inside)
        else:  # only what the chosen images hold
            held = {d for root in planned.images for d in closure(snapshot, root)}
        plan.unlink = sorted(held - set(removal.digests))
    for repo, tag, digest in snapshot.tags:
        if digest in removal.images or (scope is not None and repo in scope and digest in held):
            plan.names.setdefault(digest, []).append(f"{repo}:{tag}")
    return plan


def _held_by(snapshot: CacheSnapshot, repos: set[str]) -> set[str]:
    held = {digest for repo, _, digest in snapshot.tags if repo in repos}
    for repo in repos:
        held |= snapshot.content.get(repo, set())
    return held


def _still_used(
    snapshot: CacheSnapshot, plan: EvictionPlan, scope: list[str] | None, sizes: dict[str, int]
) -> tuple[EvictionPlan, int]:
    """The plan without what stays in use, checked in removal order as the index does it
    (:meth:`SQLiteIndex.remove_unused`): referenced by a manifest that stays, or (with
    ``scope``) tagged or linked by a repository outside it."""
    parents: dict[str, set[str]] = {}
    for manifest, children in snapshot.refs.items():
        for child in children:
            parents.setdefault(child, set()).add(manifest)
    users: dict[str, set[str]] = {}
    for repo, _, digest in snapshot.tags:
        users.setdefault(digest, set()).add(repo)
    for repo, digests in snapshot.content.items():
        for digest in digests:
            users.setdefault(digest, set()).add(repo)
    removed: set[str] = set()
    result = EvictionPlan()
    kept = 0
    for digest in plan.digests:
        if any(p not in removed for p in parents.get(digest, ()) if p in snapshot.items) or (
            scope is not None and users.get(digest, set()) - set(scope)
        ):
            kept += 1
            continue
        removed.add(digest)
        result.digests.append(digest)
        result.freed += sizes.get(digest, snapshot.items[digest].size)
    result.images = [root for root in plan.images if root in removed]
    return result, kept


@dataclass(frozen=True, slots=True)
class PruneResult:
    images: int
    files: int  # files removed
    freed: int  # bytes on disk
    kept: int  # planned digests kept because something started using them


async def prune(cache: Cache, plan: PrunePlan, *, batch: int = 50) -> PruneResult:
    """Carry out a plan beside a live server: small index transactions, each re-checking
    inside that nothing uses the content now, then the files of what really went."""
    removed_files = freed = 0
    gone: list[str] = []
    async with cache.removing() as changed:
        digests = plan.removal.digests
        for start in range(0, len(digests), batch):
            chunk = digests[start : start + batch]
            removed = await cache.index.remove_unused(chunk, scope=plan.scope)
            await changed()
            sizes = await cache.store.disk_sizes([parse_digest(d) for d in removed])
            for digest in removed:
                if await cache.store.delete(parse_digest(digest)):
                    removed_files += 1
                    freed += sizes.get(digest, 0)
            gone += removed
        if plan.scope is not None and plan.unlink:
            for start in range(0, len(plan.unlink), batch):
                await cache.index.unlink(plan.scope, plan.unlink[start : start + batch])
                await changed()
    went = set(gone)
    return PruneResult(
        images=sum(1 for root in plan.removal.images if root in went),
        files=removed_files,
        freed=freed,
        kept=len(plan.removal.digests) - len(gone),
    )


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
    and the number of bytes hashed.

    Safe beside a live server: every finding is checked again just before it is
    reported (and again, for a repair, just before acting): a file that vanished was
    evicted (fine), a row that vanished was removed (fine), a file younger than
    :data:`ORPHAN_GRACE` *when it is looked at* may be a commit whose row is on its way.
    """
    snapshot = await cache.index.snapshot()
    problems: list[Problem] = []
    hashed = 0

    for digest, item in snapshot.items.items():
        found, length = await _check_file(cache, digest, item.media_type, item.size, progress)
        hashed += length
        if found is None:
            continue
        # Gone from the index meanwhile (evicted, pruned)? Then it is no finding; and the
        # file is looked at once more (a fetch may have replaced it).
        if digest not in await cache.index.known([digest]):
            continue
        found, _ = await _check_file(cache, digest, item.media_type, item.size, None)
        if found is not None:
            problems.append(found)

    on_disk = [str(d) async for d in cache.store.iter_digests()]
    unknown = [d for d in on_disk if d not in snapshot.items]
    indexed_now = await cache.index.known(unknown) if unknown else set()
    for digest in sorted(set(unknown) - indexed_now):
        path = cache.store.path_for(parse_digest(digest))
        if await asyncio.to_thread(_older_than_grace, path):
            problems.append(Problem("orphan", digest, "file the index does not know"))
    dangling = sorted({d for _, _, d in snapshot.tags if d not in snapshot.items})
    if dangling:
        now_known = await cache.index.known(dangling)
        for repo, tag, digest in snapshot.tags:
            if digest in dangling and digest not in now_known:
                problems.append(
                    Problem("dangling-tag", digest, f"{repo}:{tag} names no cached manifest")
                )
    for name in await asyncio.to_thread(_old_staging, cache.store.staging_dir):
        problems.append(Problem("staging", name, "leftover of an interrupted download"))

    if repair and problems:
        async with cache.removing() as changed:
            await _repair(cache, problems, snapshot, changed)
    return problems, hashed


async def _check_file(
    cache: Cache,
    digest: str,
    media_type: str | None,
    size: int,
    progress: Callable[[int], None] | None,
) -> tuple[Problem | None, int]:
    """Hash one file; a problem, or None when it is sound or simply gone."""
    parsed = parse_digest(digest)
    path = cache.store.path_for(parsed)
    ok, length = await cache.store.verify(parsed, progress)  # (False, 0) when there is none
    if not ok and length == 0 and not await asyncio.to_thread(path.exists):
        return Problem("missing", digest, "indexed but no file"), 0
    if not ok:
        return Problem("corrupt", digest, f"content does not hash to its name ({length} bytes)"), (
            length
        )
    if length != size:
        return Problem("corrupt", digest, f"{length} bytes, index says {size}"), length
    if media_type is not None:
        body = await cache.store.read_all(parsed, 64 * 1024 * 1024)
        if body is None:
            return None, length  # evicted after the hash: fine
        try:
            parse_manifest(body, media_type)
        except ManifestParseError as exc:
            return Problem("corrupt", digest, f"manifest unreadable: {exc}"), length
    return None, length


def _older_than_grace(path: Path) -> bool:
    """Whether the file exists and was last written more than the grace period ago,
    measured now (a file gone meanwhile is fine)."""
    try:
        return time.time() - path.stat().st_mtime > ORPHAN_GRACE
    except FileNotFoundError:
        return False


def _old_staging(staging: Path) -> list[str]:
    names: list[str] = []
    try:
        entries = list(os.scandir(staging))
    except FileNotFoundError:
        return names
    for entry in entries:
        if _older_than_grace(Path(entry.path)):  # one vanishing meanwhile is fine
            names.append(entry.name)
    return sorted(names)


async def _repair(
    cache: Cache,
    problems: list[Problem],
    snapshot: CacheSnapshot,
    changed: Callable[[], Awaitable[None]],
) -> None:
    """Act on each finding after checking it once more, just before acting."""
    for problem in problems:
        digest = problem.digest
        if problem.kind == "staging":
            leftover = cache.store.staging_dir / digest
            if await asyncio.to_thread(_older_than_grace, leftover):
                await asyncio.to_thread(leftover.unlink, missing_ok=True)
            continue
        if problem.kind == "dangling-tag":
            await cache.index.remove_dangling_tags([digest])
            await changed()
            continue
        parsed = parse_digest(digest)
        path = cache.store.path_for(parsed)
        if problem.kind == "orphan":
            if await cache.index.known([digest]) or not await asyncio.to_thread(
                _older_than_grace, path
            ):
                continue  # indexed or rewritten meanwhile
            await cache.store.delete(parsed)
            continue
        item = snapshot.items[digest]
        found, _ = await _check_file(cache, digest, item.media_type, item.size, None)
        if found is None or digest not in await cache.index.known([digest]):
            continue  # sound again (fetched anew) or no longer indexed
        await cache.index.remove([digest])
        await changed()
        if found.kind == "corrupt":
            # The file is the one just found corrupt unless a server replaced it since.
            again, _ = await _check_file(cache, digest, item.media_type, item.size, None)
            if again is not None:
                await cache.store.delete(parsed)


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


@dataclass(frozen=True, slots=True)
class MirrorAccess:
    """How ``warm`` reaches the mirror: its URL (never with user info), credentials for
    its Basic authentication, and TLS verification (a CA file, or none at all)."""

    url: str
    username: str | None = None
    password: str | None = None
    tls_verify: bool = True
    ca_cert: Path | None = None

    @classmethod
    def parse(cls, url: str, **kwargs: Any) -> MirrorAccess:
        """User info in the URL is taken as the credentials (unless given apart) and
        removed from it, so that it is printed nowhere."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--mirror {redact_url(url)!r}: expected http(s)://host[:port]")
        if parts.username is not None and kwargs.get("username") is None:
            kwargs["username"] = unquote(parts.username)
            if kwargs.get("password") is None and parts.password is not None:
                kwargs["password"] = unquote(parts.password)
        return cls(redact_url(url).rstrip("/"), **kwargs)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https:"):
            return True
        if not self.tls_verify:
            return False
        context = ssl.create_default_context()
        if self.ca_cert is not None:
            try:
                context.load_verify_locations(self.ca_cert)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"--ca-cert {self.ca_cert}: {exc}") from None
        return context


async def warm(
    mirror: MirrorAccess | str,
    images: Iterable[str],
    *,
    platforms: list[Platform] | None,
    concurrency: int,
    on_bytes: Callable[[int], None] | None = None,
    on_image: Callable[[WarmResult], None] | None = None,
) -> list[WarmResult]:
    """Pull images through a running mirror (its own cache logic fills the cache),
    checking and discarding the bytes. Safe to re-run: what is cached is a fast hit."""
    access = MirrorAccess.parse(mirror) if isinstance(mirror, str) else mirror
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    auth = None
    if access.username is not None:
        auth = aiohttp.BasicAuth(access.username, access.password or "")
    async with aiohttp.ClientSession(
        access.url,
        timeout=timeout,
        auto_decompress=False,
        auth=auth,
        connector=aiohttp.TCPConnector(ssl=access.ssl_context()),
    ) as session:
        warmer = _Warmer(session, asyncio.Semaphore(concurrency), platforms, on_bytes)

        async def one(ref: str) -> WarmResult:
            result = WarmResult(ref)
            try:
                name, reference = split_image(ref)
                await warmer.manifest(name, reference, result, top=True)
            except (aiohttp.ClientError, TimeoutError, WarmError, ValueError) as exc:
                result.error = _redact_userinfo(str(exc)) or type(exc).__name__
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


def _redact_userinfo(text: str) -> str:
    """Any ``scheme://user:password@`` in an error text, without the user info."""
    return re.sub(r"(\w+://)[^/@\s]*@", r"\1", text)


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
