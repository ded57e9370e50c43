"""The Index contract, run against every index (see ``conftest.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from registry_mirror.index import Index, IndexFailure, ManifestRecord
from registry_mirror.reference import Digest
from tests.contracts.conftest import IndexHarness

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER, CONFIG, OTHER = Digest.of(b"layer"), Digest.of(b"config"), Digest.of(b"other layer")
MANIFEST, SECOND = Digest.of(b"manifest"), Digest.of(b"second manifest")
LIST = Digest.of(b"image index")


async def image(
    index: Index,
    repo: str | None,
    manifest: Digest = MANIFEST,
    blobs: tuple[Digest, ...] = (CONFIG, LAYER),
) -> None:
    """A manifest and its blobs, seen through ``repo``, as the mirror records them."""
    await index.put_manifest(repo, ManifestRecord(manifest, OCI_MANIFEST, 100), list(blobs))
    for blob in blobs:
        await index.put_blob(repo, blob, len(str(blob)))


@contextlib.asynccontextmanager
async def another_handle(index: IndexHarness) -> AsyncIterator[Index]:
    """Another handle on the same content (what another process reads), open."""
    other = index.fresh()
    await other.open()
    try:
        yield other
    finally:
        await other.close()


def operator_call(index: Index, name: str) -> Any:
    """One of the operator commands' calls (not every index has them)."""
    if not hasattr(index, name):
        pytest.skip(f"this index has no {name}")
    return getattr(index, name)


async def test_tags(index: IndexHarness) -> None:
    ix = index.index
    assert await ix.get_tag("r/a", "1") is None
    assert await ix.list_tags("r/a") == []
    await ix.set_tag("r/a", "1", MANIFEST)  # a manifest the index does not have: ignored
    assert await ix.get_tag("r/a", "1") is None
    await image(ix, "r/a")
    await image(ix, "r/a", SECOND)
    await ix.set_tag("r/a", "1", MANIFEST)
    await ix.set_tag("r/a", "latest", MANIFEST)
    await ix.set_tag("r/a", "0.9", MANIFEST)
    assert await ix.get_tag("r/a", "1") == MANIFEST
    await ix.set_tag("r/a", "1", SECOND)  # overwritten
    assert await ix.get_tag("r/a", "1") == SECOND
    await ix.set_tag("r/a", "1", SECOND)  # unchanged
    assert await ix.get_tag("r/a", "1") == SECOND
    assert await ix.list_tags("r/a") == ["0.9", "1", "latest"]
    assert await ix.get_tag("r/b", "1") is None  # tags are per repository
    assert await ix.list_tags("r/b") == []
    await ix.delete_tag("r/a", "latest")
    await ix.delete_tag("r/a", "never")
    await ix.delete_tag("r/none", "1")
    assert await ix.get_tag("r/a", "latest") is None
    assert await ix.list_tags("r/a") == ["0.9", "1"]
    assert await ix.get_tag("r/a", "0.9") == MANIFEST


async def test_manifests_with_references(index: IndexHarness) -> None:
    ix = index.index
    assert await ix.get_manifest(MANIFEST) is None
    await image(ix, "r/a")
    record = await ix.get_manifest(MANIFEST)
    assert record == ManifestRecord(MANIFEST, OCI_MANIFEST, 100)
    await ix.put_manifest(None, ManifestRecord(LIST, OCI_INDEX, 50), [MANIFEST, SECOND])
    await ix.put_manifest(None, ManifestRecord(LIST, OCI_INDEX, 50), [MANIFEST, SECOND])  # again
    assert await ix.get_manifest(LIST) == ManifestRecord(LIST, OCI_INDEX, 50)
    assert await ix.get_manifest(CONFIG) is None  # a blob is not a manifest
    snapshot = await ix.snapshot()
    assert sorted(snapshot.refs[MANIFEST], key=str) == sorted([CONFIG, LAYER], key=str)
    assert sorted(snapshot.refs[LIST], key=str) == sorted([MANIFEST, SECOND], key=str)
    assert snapshot.items[LIST].media_type == OCI_INDEX
    assert snapshot.items[LIST].size == 50
    assert snapshot.content == {"r/a": {MANIFEST, CONFIG, LAYER}}


async def test_a_manifest_without_references(index: IndexHarness) -> None:
    await index.index.put_manifest("r/a", ManifestRecord(MANIFEST, OCI_MANIFEST, 3), [])
    snapshot = await index.index.snapshot()
    assert snapshot.refs.get(MANIFEST, []) == []
    assert set(snapshot.items) == {MANIFEST}


async def test_blobs_and_repositories(index: IndexHarness) -> None:
    ix = index.index
    assert await ix.repositories() == []
    before = time.time()
    await ix.put_blob("team/app", LAYER, 5)
    await ix.put_blob("library/alpine", LAYER, 5)
    await ix.put_blob(None, OTHER, 7)  # seen through no repository (found after a crash)
    assert await ix.repositories() == ["library/alpine", "team/app"]
    snapshot = await ix.snapshot()
    assert set(snapshot.items) == {LAYER, OTHER}
    item = snapshot.items[OTHER]
    assert (item.digest, item.size, item.hits, item.media_type) == (OTHER, 7, 0, None)
    assert before - 1 <= item.created_at <= item.last_access <= time.time() + 1
    assert snapshot.content == {"library/alpine": {LAYER}, "team/app": {LAYER}}
    await image(ix, "r/b")
    await ix.set_tag("r/c", "1", MANIFEST)  # a tag makes a repository too
    assert await ix.repositories() == ["library/alpine", "r/b", "r/c", "team/app"]


async def test_snapshot(index: IndexHarness) -> None:
    ix = index.index
    await image(ix, "r/a")
    await image(ix, "r/b", SECOND, (CONFIG, OTHER))
    await ix.set_tag("r/b", "2", SECOND)
    await ix.set_tag("r/a", "1", MANIFEST)
    await ix.set_tag("r/a", "0", MANIFEST)
    snapshot = await ix.snapshot()
    assert set(snapshot.items) == {MANIFEST, SECOND, CONFIG, LAYER, OTHER}
    assert snapshot.items[MANIFEST].media_type == OCI_MANIFEST
    assert snapshot.items[LAYER].media_type is None
    assert {k: sorted(v, key=str) for k, v in snapshot.refs.items()} == {
        MANIFEST: sorted([CONFIG, LAYER], key=str),
        SECOND: sorted([CONFIG, OTHER], key=str),
    }
    assert snapshot.tags == [
        ("r/a", "0", MANIFEST),
        ("r/a", "1", MANIFEST),
        ("r/b", "2", SECOND),
    ]
    assert snapshot.content == {
        "r/a": {MANIFEST, CONFIG, LAYER},
        "r/b": {SECOND, CONFIG, OTHER},
    }


async def test_remove_forgets_the_content_and_what_names_it(index: IndexHarness) -> None:
    ix = index.index
    await image(ix, "r/a")
    await image(ix, "r/b", SECOND, (CONFIG, OTHER))
    await ix.set_tag("r/a", "1", MANIFEST)
    await ix.set_tag("r/b", "1", SECOND)
    await ix.remove([MANIFEST, LAYER])
    await ix.remove([])
    assert await ix.get_manifest(MANIFEST) is None
    assert await ix.get_tag("r/a", "1") is None  # tags pointing at it
    assert not await ix.linked("r/a", LAYER)
    snapshot = await ix.snapshot()
    assert set(snapshot.items) == {SECOND, CONFIG, OTHER}
    assert set(snapshot.refs) == {SECOND}  # its references went with it
    assert snapshot.tags == [("r/b", "1", SECOND)]
    assert snapshot.content == {"r/a": {CONFIG}, "r/b": {SECOND, CONFIG, OTHER}}
    await ix.remove([CONFIG])  # r/a is left with nothing: it goes
    assert await ix.repositories() == ["r/b"]
    # A manifest that stays still says what it references, removed or not.
    assert sorted((await ix.snapshot()).refs[SECOND], key=str) == sorted([CONFIG, OTHER], key=str)


async def test_evict_keeps_what_a_staying_manifest_references(index: IndexHarness) -> None:
    ix = index.index
    await image(ix, "r/a")
    await image(ix, "r/b", SECOND, (CONFIG, OTHER))
    await ix.set_tag("r/a", "1", MANIFEST)
    assert await ix.evict([]) == []
    gone = await ix.evict([MANIFEST, CONFIG, LAYER])
    assert gone == [MANIFEST, LAYER]  # CONFIG: SECOND still references it
    snapshot = await ix.snapshot()
    assert set(snapshot.items) == {SECOND, CONFIG, OTHER}
    assert snapshot.tags == []
    assert await ix.repositories() == ["r/a", "r/b"]  # r/a still links CONFIG
    assert await ix.evict([CONFIG]) == []


async def test_evict_takes_children_met_before_their_parent(index: IndexHarness) -> None:
    ix = index.index
    await image(ix, "r/a")
    await ix.put_manifest("r/a", ManifestRecord(LIST, OCI_INDEX, 10), [MANIFEST])
    gone = await ix.evict([LAYER, CONFIG, MANIFEST, LIST])
    assert gone[0] == LIST  # the only one nothing references
    assert set(gone) == {LIST, MANIFEST, CONFIG, LAYER}
    assert (await ix.snapshot()).items == {}
    assert await ix.repositories() == []


async def test_evict_keeps_what_a_manifest_stored_since_the_plan_references(
    index: IndexHarness,
) -> None:
    shared, own, other = Digest.of(b"shared"), Digest.of(b"own"), Digest.of(b"other")
    old, new = Digest.of(b"old manifest"), Digest.of(b"new manifest")
    ix = index.index
    await ix.put_manifest("r/a", ManifestRecord(old, "application/x", 1), [shared, own])
    await ix.put_blob("r/a", shared, 1)
    await ix.put_blob("r/a", own, 1)
    # Stored after the plan [old, shared, own] was made.
    await ix.put_manifest("r/b", ManifestRecord(new, "application/x", 1), [shared, other])
    await ix.put_blob("r/b", shared, 1)
    gone = await ix.evict([old, shared, own])
    left = set((await ix.snapshot()).items)
    assert gone == [old, own]
    assert left == {new, shared}


async def test_remove_unused_within_a_scope(index: IndexHarness) -> None:
    ix = index.index
    remove_unused = operator_call(ix, "remove_unused")
    await image(ix, "r/a")
    await ix.put_blob("r/b", LAYER, 5)  # r/b links LAYER too
    await ix.put_blob("r/a", OTHER, 5)
    await ix.set_tag("r/a", "1", MANIFEST)
    plan = [MANIFEST, CONFIG, LAYER, OTHER]
    assert await remove_unused(plan, scope=["r/a"]) == [MANIFEST, CONFIG, OTHER]
    assert set((await ix.snapshot()).items) == {LAYER}
    assert await ix.linked("r/b", LAYER)
    assert await remove_unused([LAYER], scope=None) == [LAYER]
    assert await ix.repositories() == []


async def test_remove_unused_keeps_what_a_manifest_references(index: IndexHarness) -> None:
    ix = index.index
    remove_unused = operator_call(ix, "remove_unused")
    await image(ix, "r/a")
    assert await remove_unused([LAYER], scope=["r/a"]) == []
    assert await remove_unused([LAYER], scope=None) == []
    assert LAYER in (await ix.snapshot()).items


async def test_known_unlink_and_dangling_tags(index: IndexHarness) -> None:
    ix = index.index
    known = operator_call(ix, "known")
    unlink = operator_call(ix, "unlink")
    remove_dangling_tags = operator_call(ix, "remove_dangling_tags")
    await image(ix, "r/a")
    await image(ix, "r/b")
    await ix.set_tag("r/a", "1", MANIFEST)
    await ix.set_tag("r/b", "1", MANIFEST)
    assert await known([MANIFEST, LAYER, OTHER]) == {MANIFEST, LAYER}
    await unlink(["r/a"], [MANIFEST, CONFIG, LAYER])
    assert await ix.get_tag("r/a", "1") is None
    assert await ix.get_tag("r/b", "1") == MANIFEST  # other repositories keep theirs
    assert not await ix.linked("r/a", LAYER)
    assert await ix.linked("r/b", LAYER)
    assert await ix.repositories() == ["r/b"]
    assert await known([LAYER]) == {LAYER}  # the content stays
    assert await remove_dangling_tags([MANIFEST]) == 0  # it has a manifest row
    await ix.remove([MANIFEST])
    assert await remove_dangling_tags([MANIFEST]) == 0  # remove took its tags


async def test_touch_is_buffered_until_flush(index: IndexHarness) -> None:
    ix = index.index
    await ix.put_blob("r/a", LAYER, 5)
    await ix.put_blob("r/a", OTHER, 5)
    created = (await ix.snapshot()).items[LAYER].last_access
    await asyncio.sleep(0.01)
    async with another_handle(index) as other:
        ix.touch(LAYER)
        ix.touch(LAYER)
        ix.touch(Digest.of(b"not in the index"))  # nothing to update: ignored
        item = (await other.snapshot()).items[LAYER]
        assert item.hits == 0  # buffered: not written yet
        await ix.flush()
        await ix.flush()  # nothing buffered: nothing more
        item = (await other.snapshot()).items[LAYER]
        assert item.hits == 2
        assert item.last_access > created  # the last use is recorded
        assert (await other.snapshot()).items[OTHER].hits == 0
        ix.touch(OTHER)  # a snapshot writes what is buffered first
        assert (await ix.snapshot()).items[OTHER].hits == 1


async def test_items_of_a_few_digests_with_their_buffered_use(index: IndexHarness) -> None:
    ix = index.index
    await image(ix, "r/a")
    await ix.flush()
    stored = (await ix.snapshot()).items
    missing = Digest.of(b"not in the index")
    found = await ix.items([MANIFEST, LAYER, missing])
    assert set(found) == {MANIFEST, LAYER}  # what has no row is left out
    assert found[MANIFEST] == stored[MANIFEST]
    assert found[MANIFEST].media_type == OCI_MANIFEST
    assert found[LAYER].media_type is None
    assert found[LAYER].size == stored[LAYER].size
    await asyncio.sleep(0.01)
    ix.touch(LAYER)
    ix.touch(LAYER)
    touched = (await ix.items([LAYER]))[LAYER]  # buffered, counted without a write
    assert touched.hits == stored[LAYER].hits + 2
    assert touched.last_access > stored[LAYER].last_access
    async with another_handle(index) as other:
        assert (await other.items([LAYER]))[LAYER].hits == stored[LAYER].hits
    assert await ix.items([]) == {}


async def test_close_writes_the_buffered_last_uses(index: IndexHarness) -> None:
    ix = index.index
    await ix.put_blob("r/a", LAYER, 5)
    ix.touch(LAYER)
    await ix.close()
    async with another_handle(index) as other:
        assert (await other.snapshot()).items[LAYER].hits == 1


async def test_removed_content_forgets_its_buffered_last_use(index: IndexHarness) -> None:
    ix = index.index
    await ix.put_blob("r/a", LAYER, 5)
    ix.touch(LAYER)
    assert await ix.evict([LAYER]) == [LAYER]
    await ix.put_blob("r/a", LAYER, 5)  # stored again: a new row, unused so far
    assert (await ix.snapshot()).items[LAYER].hits == 0


async def test_another_handle_sees_what_was_written(index: IndexHarness) -> None:
    ix = index.index
    await image(ix, "r/a")
    await ix.set_tag("r/a", "1", MANIFEST)
    async with another_handle(index) as other:
        assert await other.get_tag("r/a", "1") == MANIFEST
        assert await other.get_manifest(MANIFEST) == ManifestRecord(MANIFEST, OCI_MANIFEST, 100)
        assert await other.linked("r/a", LAYER)
        assert await other.repositories() == ["r/a"]


async def test_links(index: IndexHarness) -> None:
    ix = index.index
    assert not await ix.linked("r/a", LAYER)
    await image(ix, "r/a")
    assert await ix.linked("r/a", LAYER)  # seen through r/a
    assert await ix.linked("r/a", MANIFEST)
    assert not await ix.linked("r/b", LAYER)  # stored, but not seen through r/b
    await ix.put_manifest(None, ManifestRecord(LIST, OCI_INDEX, 10), [MANIFEST, SECOND])
    assert not await ix.linked("r/b", LIST)
    linked = await ix.link("r/b", LIST)  # and everything it references, as far as known
    assert sorted(linked, key=str) == sorted((LIST, MANIFEST, SECOND, CONFIG, LAYER), key=str)
    for digest in (LIST, MANIFEST, SECOND, CONFIG, LAYER):
        assert await ix.linked("r/b", digest)
    assert await ix.repositories() == ["r/a", "r/b"]
    assert await ix.link("r/c", OTHER) == [OTHER]  # not indexed yet: itself only
    assert await ix.linked("r/c", OTHER)
    assert sorted(await ix.link("r/b", LIST), key=str) == sorted(linked, key=str)  # again: the same


async def test_link_follows_a_cycle_once(index: IndexHarness) -> None:
    ix = index.index
    await ix.put_manifest(None, ManifestRecord(MANIFEST, OCI_INDEX, 1), [SECOND])
    await ix.put_manifest(None, ManifestRecord(SECOND, OCI_INDEX, 1), [MANIFEST])
    assert sorted(await ix.link("r/a", MANIFEST), key=str) == sorted([MANIFEST, SECOND], key=str)


async def test_generation_changes_when_content_is_removed_elsewhere(
    index: IndexHarness,
) -> None:
    ix = index.index
    start = ix.generation()
    await image(ix, "r/a")
    await image(ix, "r/a", SECOND, (OTHER,))
    await ix.set_tag("r/a", "1", MANIFEST)
    await ix.set_tag("r/a", "2", SECOND)
    await ix.link("r/b", MANIFEST)
    ix.touch(LAYER)
    await ix.flush()
    await ix.delete_tag("r/a", "2")
    assert await ix.get_tag("r/a", "1") == MANIFEST
    await ix.linked("r/a", LAYER)
    await ix.snapshot()
    await ix.list_tags("r/a")
    await ix.repositories()
    assert ix.generation() == start  # nothing was removed
    # The server's own removals (eviction, a blob found damaged) are its own: it forgets
    # what it removed itself, and keeps every other memory.
    assert await ix.evict([SECOND]) == [SECOND]
    await ix.remove([OTHER])
    await ix.evict([LIST])  # not there
    await ix.remove([LIST])
    assert (await ix.snapshot()).items.keys() == {MANIFEST, CONFIG, LAYER}
    assert ix.generation() == start

    await index.remove_elsewhere([MANIFEST, LAYER])
    assert ix.generation() != start
    # What this handle may have remembered is not trusted over the removal.
    assert await ix.get_tag("r/a", "1") is None
    assert await ix.get_manifest(MANIFEST) is None
    assert not await ix.linked("r/a", LAYER)
    assert LAYER not in (await ix.snapshot()).items
    after = ix.generation()
    await image(ix, "r/a")
    await ix.set_tag("r/a", "1", MANIFEST)
    assert ix.generation() == after


async def test_concurrent_writers(index: IndexHarness) -> None:
    ix = index.index
    blobs = [Digest.of(str(n).encode()) for n in range(40)]
    await asyncio.gather(
        *(ix.put_blob(f"r/{n % 4}", blob, n) for n, blob in enumerate(blobs)),
        *(ix.put_manifest("r/m", ManifestRecord(d, OCI_MANIFEST, 1), [LAYER]) for d in blobs[:5]),
    )
    await asyncio.gather(*(ix.set_tag("r/m", f"t{n}", d) for n, d in enumerate(blobs[:5])))
    snapshot = await ix.snapshot()
    assert set(snapshot.items) == set(blobs)
    assert len(snapshot.tags) == 5
    assert await ix.repositories() == ["r/0", "r/1", "r/2", "r/3", "r/m"]


CALLS: list[tuple[str, Any]] = [
    ("get_tag", lambda ix: ix.get_tag("r/a", "1")),
    ("set_tag", lambda ix: ix.set_tag("r/a", "1", MANIFEST)),
    ("delete_tag", lambda ix: ix.delete_tag("r/a", "1")),
    ("list_tags", lambda ix: ix.list_tags("r/a")),
    ("put_manifest", lambda ix: ix.put_manifest("r/a", ManifestRecord(MANIFEST, "x", 1), [])),
    ("get_manifest", lambda ix: ix.get_manifest(MANIFEST)),
    ("linked", lambda ix: ix.linked("r/a", LAYER)),
    ("link", lambda ix: ix.link("r/a", LAYER)),
    ("put_blob", lambda ix: ix.put_blob("r/a", LAYER, 1)),
    ("repositories", lambda ix: ix.repositories()),
    ("snapshot", lambda ix: ix.snapshot()),
    ("remove", lambda ix: ix.remove([LAYER])),
    ("evict", lambda ix: ix.evict([LAYER])),
]


async def test_an_index_not_open_says_so(index: IndexHarness) -> None:
    unopened = index.fresh()
    for name, call in CALLS:
        with pytest.raises(IndexFailure):
            await call(unopened)
            pytest.fail(f"{name} worked")
    unopened.touch(LAYER)  # buffered: nothing to refuse yet
    with pytest.raises(IndexFailure):
        await unopened.flush()


async def test_a_closed_index_says_so(index: IndexHarness) -> None:
    await index.index.close()
    await index.index.close()  # twice: harmless
    for name, call in CALLS:
        with pytest.raises(IndexFailure):
            await call(index.index)
            pytest.fail(f"{name} worked")


async def test_ping_answers_while_open_and_fails_once_closed(index: IndexHarness) -> None:
    ix = index.index
    await ix.ping()
    await ix.close()
    with pytest.raises(IndexFailure):
        await ix.ping()
