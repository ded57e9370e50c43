"""Bounded storage: LRU eviction by image under a quota, max_idle, a flood of distinct
images, and a full disk (a real small tmpfs)."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry_mirror.index import CacheItem, CacheSnapshot, ManifestRecord, SQLiteIndex
from registry_mirror.mirror.eviction import Evictor, StorageLimits, apply_plan, plan_eviction
from registry_mirror.reference import Digest
from registry_mirror.storage import FilesystemBlobStore
from tests.conftest import MirrorFactory
from tests.support.disks import fill_disk, mirror_on, tmpfs
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image, sha256_digest
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.registry import RegistryProcess
from tests.support.store import blob_file, blobs_dir, staging_dir, stored_files
from tests.support.waits import wait_until, wait_until_async


def pull(mirror: MirrorProcess, image: PushedImage) -> None:
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        manifest = client.get(
            f"/v2/{image.repo}/manifests/{image.tag}", headers={"Accept": MANIFEST_ACCEPT}
        )
        assert manifest.status_code == 200, manifest.text
        for digest, data in image.blobs.items():
            blob = client.get(f"/v2/{image.repo}/blobs/{digest}")
            assert blob.status_code == 200, blob.text
            assert blob.content == data


def on_disk(mirror: MirrorProcess) -> set[str]:
    return {p.name for p in stored_files(mirror.root)}


def disk_bytes(mirror: MirrorProcess) -> int:
    """Bytes on disk of the cached blobs (eviction may remove files while we count)."""
    total = 0
    for path in blobs_dir(mirror.root).rglob("*"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            total += stat.st_blocks * 512
    return total


def hexes(image: PushedImage) -> set[str]:
    return {d.split(":")[1] for d in [image.digest, *image.blobs]}


def item(digest: Digest, size: int, last: float, manifest: bool = False) -> CacheItem:
    return CacheItem(digest, size, 0.0, last, 1, "application/x" if manifest else None)


def named(name: str) -> Digest:
    """A digest known by a name in the test."""
    return Digest.of(name.encode())


def test_plan_keeps_shared_layers_and_removes_manifests_first() -> None:
    m_old, m_new, base = named("m-old"), named("m-new"), named("base")
    old_layer, new_layer, lone = named("old-layer"), named("new-layer"), named("lone")
    snapshot = CacheSnapshot(
        items={
            m_old: item(m_old, 1, 10, manifest=True),
            m_new: item(m_new, 1, 50, manifest=True),
            base: item(base, 100, 50),
            old_layer: item(old_layer, 200, 10),
            new_layer: item(new_layer, 300, 50),
            lone: item(lone, 40, 5),
        },
        refs={m_old: [base, old_layer], m_new: [base, new_layer]},
        tags=[],
        content={},
    )
    plan = plan_eviction(snapshot, need=1, now=100)
    assert plan.digests == [lone]  # least recently used image first
    plan = plan_eviction(snapshot, need=150, now=100)
    assert plan.digests == [lone, m_old, old_layer]  # the shared base stays
    assert plan.freed == 241
    plan = plan_eviction(snapshot, need=150, now=100, protected={old_layer})
    assert m_old not in plan.digests  # an image being served is kept whole
    plan = plan_eviction(snapshot, need=0, now=100, max_idle=60)
    assert plan.digests == [lone, m_old, old_layer]


def test_quota_evicts_least_recently_used_image_first(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    images = {
        name: push_image(upstream.url, f"library/{name}", "1", layers=[1_000_000], seed=seed)
        for seed, name in enumerate(["a", "b", "c", "d"])
    }
    mirror = mirror_factory(upstream.url, args=["--storage-quota", "3.5MB"])
    for name in ("a", "b", "c"):
        pull(mirror, images[name])
        time.sleep(0.05)
    pull(mirror, images["a"])  # a is used again: b is now the least recently used
    # Last use is recorded in batches, and the eviction's snapshot writes the batch
    # first: no waiting for the flusher.
    pull(mirror, images["d"])
    wait_until(lambda: not hexes(images["b"]) & on_disk(mirror), 15, interval=0.1)
    present = on_disk(mirror)
    assert hexes(images["a"]) <= present
    assert hexes(images["c"]) <= present
    assert hexes(images["d"]) <= present
    assert disk_bytes(mirror) <= 3_500_000
    assert "evicted 1 images" in mirror.log()
    # The evicted image pulls again, from upstream, correctly.
    upstream.clear_log()
    pull(mirror, images["b"])
    assert upstream.count("GET", r"/blobs/") == len(images["b"].blobs)


def test_max_idle_evicts_content_not_served(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    image = push_image(upstream.url, "library/idle", "1", layers=[10_000])
    mirror = mirror_factory(upstream.url, args=["--storage-max-idle", "2s"])
    pull(mirror, image)
    wait_until(lambda: hexes(image) <= on_disk(mirror), 10)  # published after the answer
    wait_until(lambda: not hexes(image) & on_disk(mirror), 20, interval=0.1)
    with httpx.Client(base_url=mirror.url, trust_env=False) as client:
        assert client.get("/v2/_catalog").json() == {"repositories": []}


def test_flood_of_distinct_images_stays_within_quota(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    quota = 2_000_000
    images = [
        push_image(upstream.url, f"flood/img{i}", "1", layers=[300_000], seed=100 + i)
        for i in range(20)
    ]
    mirror = mirror_factory(upstream.url, args=["--storage-quota", str(quota)])
    peak = 0
    for image in images:
        pull(mirror, image)
        peak = max(peak, disk_bytes(mirror))
    wait_until(lambda: disk_bytes(mirror) <= quota, 15, interval=0.1)
    # Between two evictions the cache may pass the quota by what is being written.
    assert peak <= quota + 400_000
    assert hexes(images[-1]) <= on_disk(mirror)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "8m") as mount:
        yield mount


def test_full_disk_serves_hits_and_proxies_misses_then_recovers(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, small_disk: Path
) -> None:
    small = push_image(upstream.url, "library/small", "1", layers=[200_000], seed=1)
    large = push_image(upstream.url, "library/large", "1", layers=[5_000_000], seed=2)
    mirror = mirror_on(small_disk, upstream.url)
    with mirror:
        pull(mirror, small)
        filler = fill_disk(small_disk)  # take the rest of the disk
        for _ in range(3):
            pull(mirror, small)  # cache hits keep working
            fill_disk(small_disk)  # what the mirror's own small files gave back
            pull(mirror, large)  # misses are proxied, uncached
        assert not hexes(large) & on_disk(mirror)
        assert list(staging_dir(mirror.root).iterdir()) == []
        log = mirror.log()
        assert log.count("cache storage failing") == 1  # once a minute, not per request
        assert_log_quiet(log)
        filler.unlink()
        os.sync()
        pull(mirror, large)
        # Space returned: cached again (published right after the answer).
        wait_until(lambda: hexes(large) <= on_disk(mirror), 10)


def stream_blob(
    mirror: MirrorProcess,
    repo: str,
    digest: str,
    received: list[int],
    outcome: list[bytes | httpx.HTTPError],
) -> None:
    """GET a blob, noting the bytes received as they come; the body or the error last."""
    body = bytearray()
    try:
        with (
            httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client,
            client.stream("GET", f"/v2/{repo}/blobs/{digest}") as response,
        ):
            for chunk in response.iter_bytes(65536):
                body += chunk
                received.append(len(body))
        outcome.append(bytes(body))
    except httpx.HTTPError as exc:
        outcome.append(exc)


def test_disk_full_mid_fill_continuation_is_verified_and_a_corrupt_one_aborted(
    upstream: RegistryProcess, small_disk: Path
) -> None:
    """The disk fills while a layer streams to its client: the client goes on straight
    from upstream (Range). That continuation is checked with the bytes already sent, so a
    corrupt one aborts the response instead of completing it with bad data."""
    image = push_image(upstream.url, "library/fullmid", "1", layers=[3_000_000], seed=21)
    layer = image.layer_digests[0]
    data = image.blobs[layer]
    with FaultyProxy(upstream.url) as proxy:
        mirror = mirror_on(small_disk, proxy.url)
        with mirror:
            for corrupt in (False, True):
                gate = proxy.gate("GET", rf"/blobs/{layer}", 500_000, times=1)
                if corrupt:
                    proxy.corrupt("GET", rf"/blobs/{layer}", times=1)
                received: list[int] = []
                outcome: list[bytes | httpx.HTTPError] = []
                thread = threading.Thread(
                    target=stream_blob, args=(mirror, image.repo, layer, received, outcome)
                )
                thread.start()
                gate.wait_reached()
                wait_until(lambda: bool(received), 15, interval=0.1)  # noqa: B023 - waited for here
                filler = fill_disk(small_disk)
                gate.release()
                thread.join(timeout=60)
                assert not thread.is_alive()
                ranged = [
                    r for r in proxy.requests("GET", rf"/blobs/{layer}") if "Range" in r.headers
                ]
                assert ranged, "the client was not continued from upstream"
                if corrupt:
                    assert isinstance(outcome[0], httpx.HTTPError), "corrupt data completed"
                else:
                    assert outcome[0] == data
                assert layer.split(":")[1] not in on_disk(mirror)
                filler.unlink()
                os.sync()
                proxy.clear_faults()
                proxy.clear_log()
            assert_log_quiet(mirror.log())


def test_a_manifest_stored_between_plan_and_eviction_keeps_its_shared_layer(
    tmp_path: Path,
) -> None:
    """The plan says layer L is held only by image A (evicted); image B, referencing L,
    is stored before the plan is applied: L must stay, in the index and on disk."""

    async def scenario() -> None:
        store = FilesystemBlobStore(tmp_path / "cache")
        store.prepare()
        index = SQLiteIndex(tmp_path / "cache" / "index.db")
        await index.open()

        async def put(data: bytes) -> Digest:
            digest = Digest.of(data)
            staged = await store.begin_write()
            await staged.write(data)
            await staged.commit(digest, len(data))
            return digest

        layer, own, other = await put(b"L" * 1000), await put(b"A" * 1000), await put(b"B" * 9)
        manifest_a, manifest_b = await put(b"manifest A"), await put(b"manifest B")
        await index.put_manifest("r/a", ManifestRecord(manifest_a, "x", 10), [layer, own])
        for blob in (layer, own):
            await index.put_blob("r/a", blob, 1000)
        plan = plan_eviction(await index.snapshot(), need=1, now=time.time())
        assert set(plan.digests) == {manifest_a, layer, own}

        await index.put_manifest("r/b", ManifestRecord(manifest_b, "x", 10), [layer, other])
        await index.put_blob("r/b", other, 9)
        result = await apply_plan(plan, index, store)

        items = (await index.snapshot()).items
        assert {layer, manifest_b, other} <= set(items)
        assert await store.stat(layer) is not None  # B is whole
        assert await store.stat(own) is None
        assert manifest_a not in items
        assert result == ([manifest_a, own], 2)
        await index.close()

    asyncio.run(scenario())


class _SnapshotIndex:
    """Just enough of an Index for the Evictor: a fixed snapshot, evictions recorded."""

    def __init__(self, snapshot: CacheSnapshot) -> None:
        self._snapshot = snapshot
        self.evicted: list[Digest] = []

    async def snapshot(self) -> CacheSnapshot:
        return self._snapshot

    async def evict(self, digests: list[Digest]) -> list[Digest]:
        self.evicted += digests
        return digests

    remove = evict


def test_planning_a_large_cache_does_not_block_the_event_loop(tmp_path: Path) -> None:
    items: dict[Digest, CacheItem] = {}
    refs: dict[Digest, list[Digest]] = {}
    for i in range(75_000):  # 300k items: about a second of planning
        manifest = Digest("sha256", f"{i:064x}")
        items[manifest] = item(manifest, 1, i, manifest=True)
        refs[manifest] = []
        for j in range(3):
            layer = Digest("sha256", f"{(j + 1) << 200 | i:064x}")
            items[layer] = item(layer, 100, i)
            refs[manifest].append(layer)
    index = _SnapshotIndex(CacheSnapshot(items, refs, [], {}))
    store = FilesystemBlobStore(tmp_path / "cache")
    store.prepare()

    async def scenario() -> tuple[float, float]:
        evictor = Evictor(index, store, StorageLimits(quota=1000), lambda: ())  # type: ignore[arg-type]
        evictor.used = 1001  # 101 bytes over 90 % of the quota: one image (301 bytes) goes
        worst = 0.0
        running = True

        async def ticker() -> None:
            nonlocal worst
            last = time.monotonic()
            while running:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                worst = max(worst, now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await evictor.run_once()
        took = time.monotonic() - started
        running = False
        await tick
        return took, worst

    # What the test process already holds (every earlier test's objects) is set aside
    # from garbage collection, as a mirror process does not hold it: a full collection
    # triggered by the planner's allocations would otherwise scan all of it, and the
    # stall measured would be this process's heap, not the planner.
    gc.collect()
    gc.freeze()
    try:
        took, worst = asyncio.run(scenario())
    finally:
        gc.unfreeze()
    first = Digest("sha256", "0" * 64)
    assert index.evicted == [first, *sorted(refs[first], key=str)]
    assert took > 0.3, "the snapshot is too small to show anything"
    assert worst < min(0.25, took / 2), f"the loop stalled {worst:.2f}s of {took:.2f}s"


class _SlowToMeasure(FilesystemBlobStore):
    """A store whose measurement of the whole cache takes as long as the test wants."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.measuring = asyncio.Event()
        self.release = asyncio.Event()

    async def disk_usage(self) -> int:
        self.measuring.set()
        await self.release.wait()
        return 10_000

    async def census(self) -> tuple[int, int]:
        """The measurement the evictor makes (blobs and bytes in one walk)."""
        return 1, await self.disk_usage()


def test_start_does_not_wait_for_the_cache_to_be_measured(tmp_path: Path) -> None:
    """Nothing is evicted on a partial count; what is added meanwhile is counted."""
    store = _SlowToMeasure(tmp_path / "cache")
    store.prepare()
    lone = Digest.of(b"x" * 5000)
    path = store.path_for(lone)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * 5000)
    lone_disk = path.stat().st_blocks * 512
    index = _SnapshotIndex(CacheSnapshot({lone: item(lone, 5000, 1.0)}, {}, [], {}))
    snapshots = 0

    async def snapshot() -> CacheSnapshot:
        nonlocal snapshots
        snapshots += 1
        return index._snapshot

    index.snapshot = snapshot  # type: ignore[method-assign]

    async def scenario() -> None:
        evictor = Evictor(index, store, StorageLimits(quota=12_000), lambda: ())  # type: ignore[arg-type]
        await asyncio.wait_for(evictor.start(), 1)
        await asyncio.wait_for(store.measuring.wait(), 5)
        evictor.added(3000)  # a fill committed during the scan: over quota (whole blocks)
        added = store.allocated(3000)
        await asyncio.sleep(0.1)
        assert snapshots == 0 and not evictor.measured.is_set()
        store.release.set()
        await asyncio.wait_for(evictor.measured.wait(), 5)
        # Measured + added; then the lone blob is evicted (90 % of the quota is 10,800).
        assert evictor.used in (10_000 + added, 10_000 + added - lone_disk)
        await wait_until_async(lambda: index.evicted, 5)
        assert index.evicted == [lone]
        assert evictor.used == 10_000 + added - lone_disk
        await evictor.stop()

    asyncio.run(scenario())


def test_a_large_cache_is_served_at_once_and_measured_in_the_background(
    upstream: RegistryProcess, tmp_path: Path
) -> None:
    with (
        tmpfs(tmp_path / "big", "200m") as mount,  # files are created quickly there
        MirrorProcess(mount / "cache", upstream.url, args=["--storage-quota", "1GB"]) as mirror,
    ):
        mirror.stop()
        rows = []
        for i in range(20_000):
            data = i.to_bytes(4, "big") * 25
            digest = sha256_digest(data)
            path = blob_file(mirror.root, digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            rows.append((digest, len(data), 0.0, time.time(), 0))
        db = sqlite3.connect(mirror.root / "index.db")
        with db:  # indexed: nothing to adopt
            db.executemany("INSERT INTO blobs VALUES (?, ?, ?, ?, ?)", rows)
        db.close()
        mirror.log_path.unlink()  # the first run's lines
        started = time.monotonic()
        mirror.start()
        assert time.monotonic() - started < 10
        wait_until(lambda: "cache measured" in mirror.log(), 15, interval=0.1)
        measured = re.search(r"cache measured: (\d+) bytes on disk", mirror.log())
        assert measured is not None and int(measured.group(1)) == disk_bytes(mirror) > 20_000 * 100
        assert "files indexed again" not in mirror.log()
