"""The in-memory index answers as SQLite does: random sequences of calls on both."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_mirror.index import CacheSnapshot, ManifestRecord, SQLiteIndex
from registry_mirror.reference import Digest
from tests.support.fakes import MemoryIndex

POOL = [Digest.of(bytes([n])) for n in range(4)]  # few: calls meet the same content
REPOS = ["r/a", "r/b"]

digests = st.sampled_from(POOL)
names = st.lists(digests, max_size=3)
repos = st.sampled_from(REPOS)
calls = st.one_of(
    st.tuples(
        st.just("put_manifest"),
        st.none() | repos,
        digests,
        st.sampled_from(["a", "b"]),
        st.lists(digests, max_size=3),
    ),
    st.tuples(st.just("put_blob"), st.none() | repos, digests, st.integers(0, 3)),
    st.tuples(st.just("set_tag"), repos, st.sampled_from(["1", "2"]), digests),
    st.tuples(st.just("delete_tag"), repos, st.sampled_from(["1", "2"])),
    st.tuples(st.just("link"), repos, digests),
    st.tuples(st.just("remove"), names),
    st.tuples(st.just("evict"), names),
    st.tuples(st.just("remove_unused"), names, st.none() | st.lists(repos, max_size=2)),
    st.tuples(st.just("unlink"), st.lists(repos, max_size=2), names),
    st.tuples(st.just("remove_dangling_tags"), names),
    st.tuples(st.just("touch"), digests),
)


async def apply(index: Any, call: tuple[Any, ...]) -> object:
    name, *args = call
    if name == "put_manifest":
        repo, digest, media_type, refs = args
        return await index.put_manifest(repo, ManifestRecord(digest, media_type, 1), refs)
    if name == "remove_unused":
        return await index.remove_unused(args[0], scope=args[1])
    if name == "link":
        return sorted(await index.link(*args), key=str)
    if name == "touch":
        index.touch(args[0])
        return await index.flush()
    return await getattr(index, name)(*args)


def state(snapshot: CacheSnapshot) -> object:
    return (
        {d: (i.size, i.hits, i.media_type) for d, i in snapshot.items.items()},
        {m: sorted(children, key=str) for m, children in snapshot.refs.items()},
        snapshot.tags,
        snapshot.content,
    )


async def contents(index: Any) -> object:
    return state(await index.snapshot()), await index.repositories()


async def observe(index: Any) -> object:
    tags = [await index.get_tag(repo, tag) for repo in REPOS for tag in ("1", "2")]
    links = [await index.linked(repo, d) for repo in REPOS for d in POOL]
    manifests = [await index.get_manifest(d) for d in POOL]
    listed = [await index.list_tags(repo) for repo in REPOS]
    return state(await index.snapshot()), await index.repositories(), tags, links, manifests, listed


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(calls, min_size=5, max_size=30))
def test_memory_index_answers_as_sqlite(sequence: list[tuple[Any, ...]]) -> None:
    async def scenario() -> None:
        sqlite, memory = SQLiteIndex(Path(":memory:")), MemoryIndex()
        await sqlite.open()
        await memory.open()
        start = memory.generation()
        try:
            for call in sequence:
                assert await apply(memory, call) == await apply(sqlite, call), call
                assert await contents(memory) == await contents(sqlite), call
            assert await observe(memory) == await observe(sqlite)
            assert memory.generation() == start  # its own removals: no other process's
        finally:
            await sqlite.close()
            await memory.close()

    asyncio.run(scenario())


def test_a_replica_changes_the_generation_when_it_removed_something() -> None:
    async def scenario() -> None:
        server = MemoryIndex()
        await server.open()
        other = server.replica()
        await other.open()
        await server.put_blob("r/a", POOL[0], 1)
        start = server.generation()
        await other.remove([POOL[1]])
        await other.evict([POOL[1]])
        await other.unlink(["r/b"], [POOL[0]])
        assert await other.remove_dangling_tags([POOL[0]]) == 0
        assert server.generation() == start  # nothing was there to remove
        await other.remove([POOL[0]])
        assert server.generation() != start
        await other.close()
        await server.close()

    asyncio.run(scenario())
