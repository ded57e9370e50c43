"""``verify``: re-hash the cache and find what is wrong; ``--repair`` mends it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from registry_mirror.index import CacheSnapshot
from registry_mirror.maintenance.cache import Cache
from registry_mirror.media_types import ManifestParseError, parse_manifest
from registry_mirror.mirror.recovery import recover_orphan
from registry_mirror.reference import Digest
from registry_mirror.storage import BlobStore, Staging

__all__ = ["ORPHAN_GRACE", "Problem", "verify"]

ORPHAN_GRACE: Final = 60.0  # a file this young may be a commit whose index row is on its way


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # corrupt, missing, orphan, dangling-tag, staging
    digest: Digest | str  # what is wrong: a digest, or a staging leftover's name
    detail: str


async def verify(
    cache: Cache,
    *,
    repair: bool,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Problem], int]:
    """Re-hash every cached blob and manifest; find missing files, files the index does
    not know, tags naming absent manifests and leftovers of interrupted writes.
    With ``repair``, mend them: what is damaged or missing is removed (so it is
    fetched again), a sound file the index does not know is indexed again. Returns the problems
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

    on_disk = [d async for d in cache.store.iter_digests()]
    unknown = [d for d in on_disk if d not in snapshot.items]
    indexed_now = await cache.index.known(unknown) if unknown else set()
    for digest in sorted(set(unknown) - indexed_now, key=str):
        if await _older_than_grace(cache.store, digest):
            problems.append(Problem("orphan", digest, "file the index does not know"))
    dangling = sorted({d for _, _, d in snapshot.tags if d not in snapshot.items}, key=str)
    if dangling:
        now_known = await cache.index.known(dangling)
        for repo, tag, digest in snapshot.tags:
            if digest in dangling and digest not in now_known:
                problems.append(
                    Problem("dangling-tag", digest, f"{repo}:{tag} names no cached manifest")
                )
    if isinstance(cache.store, Staging):
        for name in await cache.store.staging_leftovers(ORPHAN_GRACE):
            problems.append(Problem("staging", name, "leftover of an interrupted download"))

    if repair and problems:
        async with cache.removing() as changed:
            await _repair(cache, problems, snapshot, changed)
    return problems, hashed


async def _check_file(
    cache: Cache,
    digest: Digest,
    media_type: str | None,
    size: int,
    progress: Callable[[int], None] | None,
) -> tuple[Problem | None, int]:
    """Hash one file; a problem, or None when it is sound or simply gone."""
    ok, length = await cache.store.verify(digest, progress)  # (False, 0) when there is none
    if not ok and length == 0 and await cache.store.stat(digest) is None:
        return Problem("missing", digest, "indexed but no file"), 0
    if not ok:
        return Problem("corrupt", digest, f"content does not hash to its name ({length} bytes)"), (
            length
        )
    if length != size:
        return Problem("corrupt", digest, f"{length} bytes, index says {size}"), length
    if media_type is not None:
        body = await cache.store.read_all(digest, 64 * 1024 * 1024)
        if body is None:
            return None, length  # evicted after the hash: fine
        try:
            parse_manifest(body, media_type)
        except ManifestParseError as exc:
            return Problem("corrupt", digest, f"manifest unreadable: {exc}"), length
    return None, length


async def _older_than_grace(store: BlobStore, digest: Digest) -> bool:
    """Whether the blob exists and was committed more than the grace period ago,
    asked now (one gone meanwhile is fine)."""
    info = await store.stat(digest)
    return (
        info is not None
        and info.modified is not None
        and (time.time() - info.modified > ORPHAN_GRACE)
    )


async def _repair(
    cache: Cache,
    problems: list[Problem],
    snapshot: CacheSnapshot,
    changed: Callable[[], Awaitable[None]],
) -> None:
    """Act on each finding after checking it once more, just before acting."""
    if isinstance(cache.store, Staging) and any(p.kind == "staging" for p in problems):
        await cache.store.clean_staging(older_than=ORPHAN_GRACE)  # their age checked again
    for problem in problems:
        digest = problem.digest
        if problem.kind == "staging" or isinstance(digest, str):
            continue
        if problem.kind == "dangling-tag":
            await cache.index.remove_dangling_tags([digest])
            await changed()
            continue
        if problem.kind == "orphan":
            if await cache.index.known([digest]) or not await _older_than_grace(
                cache.store, digest
            ):
                continue  # indexed or rewritten meanwhile
            # As the server does at start: indexed again if sound, else removed.
            await recover_orphan(cache.store, cache.index, digest)
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
                await cache.store.delete(digest)
