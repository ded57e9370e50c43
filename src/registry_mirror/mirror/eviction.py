"""Bounded storage: quota with LRU eviction, minimum free space, maximum idle time.

The unit of eviction is an *image*: a top-level manifest (an index, or an image
manifest no index references) with everything it references, or a lone blob that no
manifest references. Images go least recently used first ("used" means served to a
client, and a pull always asks for the manifests). Content shared with an image that
stays is kept. Within an image, manifests
go before the blobs they reference, and the index row goes before the file, so the
index never points at a missing file and no cached manifest loses its blobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Final

from registry_mirror.index import CacheSnapshot, Index
from registry_mirror.metrics import Metrics
from registry_mirror.reference import Digest
from registry_mirror.storage import BlobStore, Capacity, Census, sizes_on_disk, stored_bytes

__all__ = [
    "EvictionPlan",
    "Evictor",
    "StorageLimits",
    "measure_cache",
    "plan_eviction",
    "used_bytes",
]

log = logging.getLogger(__name__)

CHECK_INTERVAL: Final = 30.0
REMEASURE_INTERVAL: Final = 600.0
LOW_WATERMARK: Final = 0.9  # evict down to 90 % of the quota


@dataclass(frozen=True, slots=True)
class StorageLimits:
    quota: int | None = None  # bytes on disk for the cache
    min_free: int | None = None  # bytes to keep free on the filesystem
    max_idle: float | None = None  # seconds without use before content goes

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.quota, self.min_free, self.max_idle))


@dataclass(slots=True)
class Image:
    root: Digest
    members: set[Digest]
    last_use: float


@dataclass(slots=True)
class EvictionPlan:
    """Digests to remove, in order, and the bytes that frees; why each goes (the limit
    that asked for it: ``quota``, ``min_free``, ``max_idle``)."""

    digests: list[Digest] = field(default_factory=list)
    images: list[Digest] = field(default_factory=list)
    freed: int = 0
    reasons: dict[Digest, str] = field(default_factory=dict)  # of images and digests

    def __bool__(self) -> bool:
        return bool(self.digests)


def images_of(snapshot: CacheSnapshot) -> list[Image]:
    """Group the cache into images, least recently used first."""
    items = snapshot.items
    referenced = {child for children in snapshot.refs.values() for child in children}
    images: list[Image] = []
    for digest in items:
        if digest in referenced:
            continue
        members: set[Digest] = set()
        stack = [digest]
        while stack:
            current = stack.pop()
            if current in members or current not in items:
                continue
            members.add(current)
            stack.extend(snapshot.refs.get(current, ()))
        # An image is used when its manifests are served (every pull asks for them); a
        # layer it shares with a newer image must not make it look recent.
        manifests = [m for m in members if items[m].media_type is not None] or list(members)
        last_use = max(items[m].last_access for m in manifests)
        images.append(Image(digest, members, last_use))
    # A digest orders as its text does (algorithm, then hex).
    images.sort(key=lambda image: (image.last_use, image.root))
    return images


def plan_eviction(
    snapshot: CacheSnapshot,
    *,
    need: int,
    now: float,
    max_idle: float | None = None,
    protected: Collection[Digest] = (),
    only: Callable[[Image], bool] | None = None,
    sizes: dict[Digest, int] | None = None,
    reason: str = "quota",
) -> EvictionPlan:
    """Choose images to evict: every image idle past ``max_idle``, then LRU images
    until ``need`` bytes are freed (for ``reason``). Images holding a ``protected``
    digest (being served or written) stay. ``sizes`` gives bytes on disk (defaults to
    the indexed sizes)."""
    images = images_of(snapshot)
    holders: dict[Digest, int] = {}
    for image in images:
        for member in image.members:
            holders[member] = holders.get(member, 0) + 1
    plan = EvictionPlan()
    for image in images:
        idle = max_idle is not None and now - image.last_use > max_idle
        if plan.freed >= need and not idle:
            continue
        if only is not None and not only(image):
            continue
        if any(member in protected for member in image.members):
            continue
        plan.images.append(image.root)
        why = "max_idle" if idle else reason
        plan.reasons[image.root] = why
        freed_here: list[Digest] = []
        for member in image.members:
            holders[member] -= 1
            if holders[member] == 0:
                freed_here.append(member)
        # Manifests first (the root before its children), then the blobs.
        freed_here.sort(
            key=lambda d: (
                snapshot.items[d].media_type is None,
                d != image.root,
                d,
            )
        )
        for digest in freed_here:
            plan.digests.append(digest)
            plan.reasons[digest] = why
            plan.freed += (sizes or {}).get(digest, snapshot.items[digest].size)
    return plan


async def apply_plan(
    plan: EvictionPlan, index: Index, store: BlobStore
) -> tuple[list[Digest], int]:
    """Remove planned content: index rows first, then files. The plan was made from a
    snapshot: content a manifest stored since then references stays (the index checks
    that in the transaction that deletes the rows), and so does its file. Returns the
    digests removed from the index and the number of files deleted."""
    removed: list[Digest] = []
    files = 0
    for start in range(0, len(plan.digests), 500):
        batch = plan.digests[start : start + 500]
        for digest in await index.evict(batch):
            removed.append(digest)
            if await store.delete(digest):
                files += 1
    return removed, files


async def used_bytes(store: BlobStore, index: Index) -> int:
    """Bytes the cache takes: measured on a disk of the store's own, else what the
    index holds."""
    if isinstance(store, Capacity):
        return await store.disk_usage()
    return sum(item.size for item in (await index.snapshot()).items.values())


async def measure_cache(store: BlobStore, index: Index) -> tuple[int, int | None]:
    """(bytes the cache takes, blobs it holds): as :func:`used_bytes`, with the count
    of blobs where it comes at no extra cost (a store that counts as it measures, or
    the index's snapshot); None otherwise."""
    if isinstance(store, Census):
        blobs, nbytes = await store.census()
        return nbytes, blobs
    if isinstance(store, Capacity):
        return await store.disk_usage(), None
    items = (await index.snapshot()).items
    return sum(item.size for item in items.values()), len(items)


class Evictor:
    """Keeps the cache within its limits, in the background.

    ``used`` is the bytes on disk of the committed blobs, measured from the filesystem
    in the background after start (serving does not wait for it; neither does anything
    get evicted before it is known) and kept up to date as content is added and removed.
    A file committed while the cache is being measured may be counted twice (seen by the
    scan and added): ``used`` errs high, by at most what was written during the scan,
    until the next measurement. ``blobs`` (None until measured, or when the store cannot
    count) is kept the same way.
    """

    def __init__(
        self,
        index: Index,
        store: BlobStore,
        limits: StorageLimits,
        in_use: Callable[[], Iterable[Digest]],
        metrics: Metrics | None = None,
    ) -> None:
        # Told what each eviction removed (memories of the index forget it).
        self.on_evict: list[Callable[[list[Digest]], None]] = []
        self.index = index
        self.store = store
        self.limits = limits
        self._in_use = in_use
        self._metrics = metrics
        self.used = 0
        self.blobs: int | None = None
        self.measured = asyncio.Event()  # set once ``used`` counts the whole cache
        self._added_total = 0  # bytes ever added, to count those added during a scan
        self._added_count = 0  # blobs ever added, likewise
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Evictor used={self.used} {self.limits}>"

    async def start(self) -> None:
        """Start guarding the disk; the cache is measured in the background."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def added(self, size: int) -> None:
        """A blob of ``size`` bytes was stored."""
        nbytes = stored_bytes(self.store, size)
        self.used += nbytes
        self._added_total += nbytes
        self._added_count += 1
        if self.blobs is not None:
            self.blobs += 1
        if self.limits.quota is not None and self.used > self.limits.quota:
            self._wake.set()

    def released(self, nbytes: int, blobs: int) -> None:
        """``blobs`` files, ``nbytes`` on disk, were removed by someone else (an admin
        action)."""
        self.used = max(0, self.used - nbytes)
        if self.blobs is not None:
            self.blobs = max(0, self.blobs - blobs)

    async def _loop(self) -> None:
        interval = CHECK_INTERVAL
        if self.limits.max_idle is not None:
            interval = max(0.5, min(interval, self.limits.max_idle / 2))
        measured: float | None = None
        while True:
            # Operator commands (prune, verify --repair) change the cache too: measure
            # again now and then.
            if measured is None or time.monotonic() - measured > REMEASURE_INTERVAL:
                try:
                    await self._measure(first=measured is None)
                    measured = time.monotonic()
                except Exception as exc:  # tried again at the next check
                    log.error("could not measure the cache: %s", exc)
            if self.measured.is_set():  # never evict on a partial count
                try:
                    await self.run_once()
                except Exception as exc:  # never stop guarding the disk
                    log.error("eviction failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def _measure(self, *, first: bool) -> None:
        started = time.monotonic()
        added_before, count_before = self._added_total, self._added_count
        on_disk, blobs = await measure_cache(self.store, self.index)
        # Evictions run in this task, never during the scan; additions may.
        self.used = on_disk + self._added_total - added_before
        self.blobs = None if blobs is None else blobs + self._added_count - count_before
        self.measured.set()
        log.log(
            logging.INFO if first else logging.DEBUG,
            "cache measured: %d bytes on disk (%.1f s)",
            self.used,
            time.monotonic() - started,
        )

    async def _need(self) -> tuple[int, str]:
        """Bytes to free, and the limit that asks for the most."""
        need, reason = 0, "quota"
        quota = self.limits.quota
        if quota is not None and self.used > quota:
            need = self.used - int(quota * LOW_WATERMARK)
        if self.limits.min_free is not None and isinstance(self.store, Capacity):
            free = await self.store.free_space()
            if free is not None and free < self.limits.min_free:
                short = int(self.limits.min_free * 1.1) - free
                if short > need:
                    need, reason = short, "min_free"
        return need, reason

    async def run_once(self) -> EvictionPlan:
        need, reason = await self._need()
        if need <= 0 and self.limits.max_idle is None:
            return EvictionPlan()
        snapshot = await self.index.snapshot()
        # Pure CPU over a snapshot that may hold millions of rows: off the event loop.
        plan = await asyncio.to_thread(
            plan_eviction,
            snapshot,
            need=need,
            now=time.time(),
            max_idle=self.limits.max_idle,
            protected=set(self._in_use()),
            reason=reason,
        )
        if not plan:
            if need > 0:
                log.warning("over the storage limit by %d bytes, nothing evictable", need)
            return plan
        sizes = await sizes_on_disk(self.store, plan.digests)
        removed, files = await apply_plan(plan, self.index, self.store)
        for listener in self.on_evict:
            listener(removed)
        freed = sum(sizes.get(digest, 0) for digest in removed)
        self.used = max(0, self.used - freed)
        if self.blobs is not None:
            self.blobs = max(0, self.blobs - files)
        self._count(plan, removed, sizes)
        kept = len(plan.digests) - len(removed)
        log.info(
            "evicted %d images (%d files, %d bytes on disk%s); cache now %d bytes",
            len(plan.images),
            files,
            freed,
            f"; {kept} kept, referenced since the plan" if kept else "",
            self.used,
        )
        return plan

    def _count(self, plan: EvictionPlan, removed: list[Digest], sizes: dict[Digest, int]) -> None:
        """The eviction's images, blobs and bytes, by the reason each went."""
        if self._metrics is None:
            return
        tally: dict[str, list[int]] = {}
        gone = set(removed)
        for root in plan.images:
            if root in gone:  # an image whose root stayed (referenced since) was not evicted
                tally.setdefault(plan.reasons[root], [0, 0, 0])[0] += 1
        for digest in removed:
            counts = tally.setdefault(plan.reasons.get(digest, "quota"), [0, 0, 0])
            counts[1] += 1
            counts[2] += sizes.get(digest, 0)
        for why, (images, blobs, nbytes) in tally.items():
            self._metrics.evicted(why, images, blobs, nbytes)
