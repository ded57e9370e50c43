"""``prune``: remove images by age, by size or by repository, beside a live server."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from registry_mirror.index import CacheSnapshot
from registry_mirror.maintenance.cache import Cache
from registry_mirror.maintenance.inventory import Naming, closure
from registry_mirror.mirror.eviction import EvictionPlan, plan_eviction, used_bytes
from registry_mirror.reference import Digest
from registry_mirror.storage import sizes_on_disk

__all__ = [
    "NothingMatches",
    "PrunePlan",
    "PruneResult",
    "apply_prune",
    "plan_forget",
    "plan_prune",
    "prune",
]


class NothingMatches(Exception):
    """A repository pattern given to ``prune`` names no cached repository."""


@dataclass(slots=True)
class PrunePlan:
    """What ``prune`` removes (files and rows, in order), and which repositories only
    lose their tags and links because another repository still uses the content."""

    removal: EvictionPlan
    scope: list[str] | None  # the repositories pruned; None: all
    unlink: list[Digest] = field(default_factory=list)  # what those repositories let go of
    kept: int = 0  # planned files kept because another repository or image uses them
    names: dict[Digest, list[str]] = field(default_factory=dict)  # image → repo:tag
    busy: list[Digest] = field(default_factory=list)  # kept: being served or written

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
        need = max(0, await used_bytes(cache.store, cache.index) - to_size)
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
    sizes = await sizes_on_disk(cache.store, list(snapshot.items))
    planned = plan_eviction(
        snapshot, need=need, now=time.time(), max_idle=older_than, only=only, sizes=sizes
    )
    removal, kept = _still_used(snapshot, planned, scope, sizes)
    plan = PrunePlan(removal, scope, kept=kept)
    held: set[Digest] = set()
    if scope is not None:
        inside = set(scope)
        if older_than is None and to_size is None:
            held = _held_by(snapshot, inside)
        else:  # only what the chosen images hold
            held = {d for root in planned.images for d in closure(snapshot, root)}
        plan.unlink = sorted(held - set(removal.digests), key=str)
    for repo, tag, digest in snapshot.tags:
        if digest in removal.images or (scope is not None and repo in scope and digest in held):
            plan.names.setdefault(digest, []).append(f"{repo}:{tag}")
    return plan


async def plan_forget(
    cache: Cache, repo: str, root: Digest, *, in_use: Collection[Digest] = ()
) -> PrunePlan:
    """What forgetting the image ``root`` of the repository ``repo`` (cache key)
    removes: as :func:`plan_prune` of that repository, limited to that one image. What
    another image or repository uses stays (``repo`` only lets go of it: its tags and
    links), and so does what is ``in_use`` (being served or written). Planned off the
    event loop: the server forgets while it serves, and the snapshot is the whole cache."""
    snapshot = await cache.index.snapshot()
    image = closure(snapshot, root)
    sizes = await sizes_on_disk(cache.store, [d for d in image if d in snapshot.items])
    return await asyncio.to_thread(
        _plan_forget, snapshot, repo, root, image, sizes, in_use=frozenset(in_use)
    )


def _plan_forget(
    snapshot: CacheSnapshot,
    repo: str,
    root: Digest,
    image: set[Digest],
    sizes: dict[Digest, int],
    *,
    in_use: frozenset[Digest],
) -> PrunePlan:
    cached = {r for r, _, _ in snapshot.tags} | set(snapshot.content)
    elsewhere = _held_by(snapshot, cached - {repo})
    only = lambda candidate: candidate.root == root and root not in elsewhere  # noqa: E731
    planned = plan_eviction(snapshot, need=1 << 62, now=time.time(), only=only, sizes=sizes)
    busy = [d for d in planned.digests if d in in_use]
    planned.digests = [d for d in planned.digests if d not in in_use]
    removal, _ = _still_used(snapshot, planned, [repo], sizes)
    # Kept: what of the image another image, repository or tag uses.
    kept = len((image & set(snapshot.items)) - set(removal.digests) - set(busy))
    plan = PrunePlan(removal, [repo], kept=kept, busy=busy)
    # What the repository lets go of: this image's content it holds, but not what its
    # other images (other tags, manifests linked there) still hold.
    holds = _held_by(snapshot, {repo})
    others: set[Digest] = set()
    for digest in holds - image:
        item = snapshot.items.get(digest)
        if item is not None and item.media_type is not None:
            others |= closure(snapshot, digest)
    held = (image & (holds | {root})) - others
    plan.unlink = sorted(held - set(removal.digests), key=str)
    plan.names[root] = [f"{r}:{t}" for r, t, d in snapshot.tags if r == repo and d == root]
    return plan


def _held_by(snapshot: CacheSnapshot, repos: set[str]) -> set[Digest]:
    held = {digest for repo, _, digest in snapshot.tags if repo in repos}
    for repo in repos:
        held |= snapshot.content.get(repo, set())
    return held


def _still_used(
    snapshot: CacheSnapshot,
    plan: EvictionPlan,
    scope: list[str] | None,
    sizes: dict[Digest, int],
) -> tuple[EvictionPlan, int]:
    """The plan without what stays in use, checked in removal order as the index does it
    (:meth:`SQLiteIndex.remove_unused`): referenced by a manifest that stays, or (with
    ``scope``) tagged or linked by a repository outside it."""
    parents: dict[Digest, set[Digest]] = {}
    for manifest, children in snapshot.refs.items():
        for child in children:
            parents.setdefault(child, set()).add(manifest)
    users: dict[Digest, set[str]] = {}
    for repo, _, digest in snapshot.tags:
        users.setdefault(digest, set()).add(repo)
    for repo, digests in snapshot.content.items():
        for digest in digests:
            users.setdefault(digest, set()).add(repo)
    removed: set[Digest] = set()
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
    async with cache.removing() as changed:
        result, _ = await apply_prune(cache, plan, changed, batch=batch)
    return result


async def apply_prune(
    cache: Cache,
    plan: PrunePlan,
    changed: Callable[[], Awaitable[None]],
    *,
    batch: int = 50,
) -> tuple[PruneResult, list[Digest]]:
    """:func:`prune`'s work, inside ``cache.removing()`` (``changed`` is what it
    yields); also returns the digests removed."""
    removed_files = freed = 0
    gone: list[Digest] = []
    digests = plan.removal.digests
    for start in range(0, len(digests), batch):
        chunk = digests[start : start + batch]
        removed = await cache.index.remove_unused(chunk, scope=plan.scope)
        await changed()
        sizes = await sizes_on_disk(cache.store, removed)
        for digest in removed:
            if await cache.store.delete(digest):
                removed_files += 1
                freed += sizes.get(digest, 0)
        gone += removed
    if plan.scope is not None and plan.unlink:
        for start in range(0, len(plan.unlink), batch):
            await cache.index.unlink(plan.scope, plan.unlink[start : start + batch])
            await changed()
    went = set(gone)
    result = PruneResult(
        images=sum(1 for root in plan.removal.images if root in went),
        files=removed_files,
        freed=freed,
        kept=len(plan.removal.digests) - len(gone),
    )
    return result, gone
