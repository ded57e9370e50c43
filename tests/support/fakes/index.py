"""The Index in memory: tables in dicts, shared by the handles on them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from registry_mirror.index import CacheItem, CacheSnapshot, IndexFailure, ManifestRecord
from registry_mirror.index.base import with_buffered
from registry_mirror.index.statements import MAX_LINKED
from registry_mirror.reference import Digest

__all__ = ["MemoryIndex"]


@dataclass
class _Blob:
    size: int
    created_at: float
    last_access: float
    hits: int = 0


@dataclass
class _Tables:
    """One index's content, shared by every handle on it (like a database file)."""

    repositories: dict[str, float] = field(default_factory=dict)  # name → created at
    tags: dict[tuple[str, str], Digest] = field(default_factory=dict)  # (repo, tag) → digest
    manifests: dict[Digest, tuple[str, int]] = field(default_factory=dict)  # media type, size
    refs: dict[Digest, dict[Digest, None]] = field(default_factory=dict)  # manifest → children
    blobs: dict[Digest, _Blob] = field(default_factory=dict)
    content: dict[str, set[Digest]] = field(default_factory=dict)  # repo → digests linked
    generation: int = 0

    def footprint(self) -> tuple[int, ...]:
        """How much there is: smaller after anything was removed (what is removed is
        never added back by the same call)."""
        linked = sum(len(digests) for digests in self.content.values())
        tables = len(self.tags), len(self.manifests), len(self.refs), len(self.blobs)
        return (*tables, len(self.repositories), linked)

    def repo(self, name: str) -> None:
        self.repositories.setdefault(name, time.time())

    def add_content(self, repo: str | None, digest: Digest, size: int) -> None:
        now = time.time()
        self.blobs.setdefault(digest, _Blob(size, now, now))
        if repo is not None:
            self.repo(repo)
            self.content.setdefault(repo, set()).add(digest)

    def delete_rows(self, digests: list[Digest]) -> None:
        gone = set(digests)
        self.tags = {key: d for key, d in self.tags.items() if d not in gone}
        for digest in digests:
            self.refs.pop(digest, None)
            self.manifests.pop(digest, None)
            self.blobs.pop(digest, None)
        for linked in self.content.values():
            linked.difference_update(gone)

    def drop_empty_repositories(self) -> None:
        tagged = {repo for repo, _ in self.tags}
        for name in list(self.repositories):
            if name not in tagged and not self.content.get(name):
                del self.repositories[name]
                self.content.pop(name, None)

    def users(self, digest: Digest) -> set[str]:
        """The repositories that tag or link ``digest``."""
        tagging = {repo for (repo, _), d in self.tags.items() if d == digest}
        return tagging | {repo for repo, linked in self.content.items() if digest in linked}

    def referenced(self, digest: Digest) -> bool:
        return any(digest in children for children in self.refs.values())

    def remove_unreferenced(self, digests: list[Digest], inside: set[str] | None) -> list[Digest]:
        """As the SQLite index does: in order, keeping what a manifest that stays (or a
        repository outside ``inside``) still uses; a child met before its parent is
        tried again once the parent went."""
        removed: list[Digest] = []
        pending = list(digests)
        while pending:
            kept: list[Digest] = []
            for digest in pending:
                if self.referenced(digest) or (inside is not None and self.users(digest) - inside):
                    kept.append(digest)
                    continue
                self.delete_rows([digest])
                removed.append(digest)
            if len(kept) == len(pending):
                break
            pending = kept
        self.drop_empty_repositories()
        return removed


class MemoryIndex:
    """The ``Index`` in memory. ``generation()`` changes when content is removed through
    a :meth:`replica` (another process: an operator command), as the server's
    ``ROOT/lock`` does for SQLite; the server's own removals (``remove``, ``evict``)
    leave it, and so does a call that removed nothing."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._open = False
        self._touched: dict[Digest, tuple[float, int]] = {}
        self._elsewhere = False  # a replica: its removals change the generation

    def __repr__(self) -> str:
        return f"<MemoryIndex {len(self._tables.blobs)} items>"

    def replica(self) -> MemoryIndex:
        """Another handle (closed: open it) on the same content, as another process
        opening the same database would have: its own buffer of last uses."""
        other = MemoryIndex()
        other._tables = self._tables
        other._elsewhere = True
        return other

    async def _ready(self) -> _Tables:
        await asyncio.sleep(0)
        if not self._open:
            raise IndexFailure("index is not open")
        return self._tables

    def _changed(self, before: tuple[int, ...]) -> None:
        """After a removal: a new generation when a replica removed something."""
        if self._elsewhere and self._tables.footprint() != before:
            self._tables.generation += 1

    async def open(self) -> None:
        await asyncio.sleep(0)
        self._open = True

    def generation(self) -> bytes:
        return self._tables.generation.to_bytes(8, "big")

    async def ping(self) -> None:
        await self._ready()

    async def close(self) -> None:
        if not self._open:
            return
        await self.flush()
        self._open = False

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        return (await self._ready()).tags.get((repo, tag))

    async def set_tag(self, repo: str, tag: str, digest: Digest) -> None:
        tables = await self._ready()
        if digest not in tables.manifests:
            return  # as SQLite: only for a manifest the index has
        tables.repo(repo)
        tables.tags[(repo, tag)] = digest

    async def delete_tag(self, repo: str, tag: str) -> None:
        (await self._ready()).tags.pop((repo, tag), None)

    async def list_tags(self, repo: str) -> list[str]:
        return sorted(tag for r, tag in (await self._ready()).tags if r == repo)

    async def put_manifest(
        self, repo: str | None, record: ManifestRecord, references: list[Digest]
    ) -> None:
        tables = await self._ready()
        digest = record.digest
        tables.manifests[digest] = (record.media_type, record.size)
        children = tables.refs.setdefault(digest, {})
        children.update(dict.fromkeys(references))
        if not children:
            del tables.refs[digest]
        tables.add_content(repo, digest, record.size)

    async def get_manifest(self, digest: Digest) -> ManifestRecord | None:
        found = (await self._ready()).manifests.get(digest)
        return None if found is None else ManifestRecord(digest, found[0], found[1])

    async def linked(self, repo: str, digest: Digest) -> bool:
        return digest in (await self._ready()).content.get(repo, ())

    async def link(self, repo: str, digest: Digest) -> list[Digest]:
        tables = await self._ready()
        reached = dict.fromkeys([digest])
        queue = [digest]
        while queue and len(reached) < MAX_LINKED:
            for child in tables.refs.get(queue.pop(0), {}):
                if child not in reached and len(reached) < MAX_LINKED:
                    reached[child] = None
                    queue.append(child)
        tables.repo(repo)
        tables.content.setdefault(repo, set()).update(reached)
        return list(reached)

    async def put_blob(self, repo: str | None, digest: Digest, size: int) -> None:
        (await self._ready()).add_content(repo, digest, size)

    async def repositories(self) -> list[str]:
        return sorted((await self._ready()).repositories)

    async def snapshot(self) -> CacheSnapshot:
        await self.flush()
        tables = await self._ready()
        items = {
            digest: CacheItem(
                digest,
                row.size,
                row.created_at,
                row.last_access,
                row.hits,
                tables.manifests[digest][0] if digest in tables.manifests else None,
            )
            for digest, row in tables.blobs.items()
        }
        return CacheSnapshot(
            items,
            {manifest: list(children) for manifest, children in tables.refs.items()},
            [(repo, tag, digest) for (repo, tag), digest in sorted(tables.tags.items())],
            {repo: set(linked) for repo, linked in tables.content.items() if linked},
        )

    async def items(self, digests: list[Digest]) -> dict[Digest, CacheItem]:
        tables = await self._ready()
        found = {}
        for digest in digests:
            row = tables.blobs.get(digest)
            if row is not None:
                manifest = tables.manifests.get(digest)
                found[digest] = CacheItem(
                    digest,
                    row.size,
                    row.created_at,
                    row.last_access,
                    row.hits,
                    manifest[0] if manifest else None,
                )
        return with_buffered(found, self._touched)

    async def remove(self, digests: list[Digest]) -> None:
        if not digests:
            return
        tables = await self._ready()
        before = tables.footprint()
        tables.delete_rows(digests)
        tables.drop_empty_repositories()
        self._forget(digests)
        self._changed(before)

    async def evict(self, digests: list[Digest]) -> list[Digest]:
        if not digests:
            return []
        tables = await self._ready()
        before = tables.footprint()
        gone = tables.remove_unreferenced(digests, None)
        self._forget(gone)
        self._changed(before)
        return gone

    # --- the operator commands' calls (as the SQLite index has them) ------------------

    async def known(self, digests: list[Digest]) -> set[Digest]:
        tables = await self._ready()
        return {digest for digest in digests if digest in tables.blobs}

    async def remove_unused(
        self, digests: list[Digest], *, scope: list[str] | None
    ) -> list[Digest]:
        tables = await self._ready()
        inside = None if scope is None else set(scope) & set(tables.repositories)
        before = tables.footprint()
        removed = tables.remove_unreferenced(digests, inside)
        self._forget(removed)
        self._changed(before)
        return removed

    async def unlink(self, repos: list[str], digests: list[Digest]) -> None:
        tables = await self._ready()
        before = tables.footprint()
        names, gone = set(repos), set(digests)
        tables.tags = {
            (repo, tag): digest
            for (repo, tag), digest in tables.tags.items()
            if repo not in names or digest not in gone
        }
        for repo in names:
            tables.content.get(repo, set()).difference_update(gone)
        tables.drop_empty_repositories()
        self._changed(before)

    async def remove_dangling_tags(self, digests: list[Digest]) -> int:
        tables = await self._ready()
        dangling = {digest for digest in digests if digest not in tables.manifests}
        before = tables.footprint()
        tables.tags = {key: d for key, d in tables.tags.items() if d not in dangling}
        tables.drop_empty_repositories()
        self._forget(digests)
        self._changed(before)
        return before[0] - len(tables.tags)

    def _forget(self, digests: list[Digest]) -> None:
        for digest in digests:
            self._touched.pop(digest, None)

    def touch(self, digest: Digest) -> None:
        _, hits = self._touched.get(digest, (0.0, 0))
        self._touched[digest] = (time.time(), hits + 1)

    async def flush(self) -> None:
        if not self._touched:
            return
        tables = await self._ready()
        batch, self._touched = self._touched, {}
        for digest, (ts, hits) in batch.items():
            row = tables.blobs.get(digest)
            if row is not None:
                row.last_access = max(row.last_access, ts)
                row.hits += hits
