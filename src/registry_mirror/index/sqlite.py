"""The embedded Index: SQLite in WAL mode, on one dedicated connection thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from registry_mirror.index.base import (
    CacheItem,
    CacheSnapshot,
    GenerationWatch,
    IndexFailure,
    ManifestRecord,
    with_buffered,
)
from registry_mirror.index.statements import (
    MAX_LINKED,
    MAX_REMEMBERED_TAGS,
    SCHEMA,
    SCHEMA_VERSION,
    delete_rows,
    drop_empty_repositories,
    ids,
    read_snapshot,
    remove_unreferenced,
    stored,
)
from registry_mirror.reference import Digest

__all__ = ["SQLiteIndex"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _no_generation() -> bytes:
    return b""


class SQLiteIndex:
    """``generation`` tells whether another process (an operator command) may have
    changed the database: the tag memory is trusted only while it returns what it
    returned when the memory was filled (see :mod:`registry_mirror.rootlock`)."""

    def __init__(self, path: Path, *, generation: Callable[[], bytes] | None = None) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index")
        self._db: sqlite3.Connection | None = None
        self._touched: dict[Digest, tuple[float, int]] = {}
        self._tags: dict[tuple[str, str], Digest] = {}
        self.generation = generation or _no_generation
        self._tags_watch = GenerationWatch(self.generation, self._forget_tags)

    def __repr__(self) -> str:
        return f"<SQLiteIndex {self.path}>"

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """``fn`` in one transaction on the index thread. A ``write`` takes the write
        lock first (``BEGIN IMMEDIATE``), so what it reads is still true when it writes;
        a read is one consistent snapshot (``BEGIN``)."""

        def call() -> T:
            if self._db is None:
                raise IndexFailure("index is not open")
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    return fn(self._db)
            except sqlite3.Error as exc:
                raise IndexFailure(f"index {self.path}: {exc}") from exc

        return await self._on_thread(call)

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except RuntimeError as exc:  # its thread is shut down: closed
            raise IndexFailure(f"index {self.path} is closed") from exc
        return await future

    async def open(self) -> None:
        def connect() -> None:
            db: sqlite3.Connection | None = None
            try:
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA busy_timeout=5000")
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise IndexFailure(
                        f"index {self.path} has schema {version}, newer than this version"
                        f" understands ({SCHEMA_VERSION})"
                    )
                db.executescript(SCHEMA)
                if version != SCHEMA_VERSION:  # a read-only command writes nothing
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.isolation_level = "DEFERRED"
            except BaseException as exc:
                if db is not None:
                    db.close()  # never a descriptor left behind by a failed open
                if isinstance(exc, sqlite3.Error):
                    raise IndexFailure(f"cannot open index {self.path}: {exc}") from exc
                raise
            self._db = db

        await self._on_thread(connect)

    async def close(self) -> None:
        """Flush, close the connection and stop the index thread (also after a failed
        or no open); closing twice is harmless."""
        if self._db is not None:
            try:
                await self.flush()
            except IndexFailure as exc:
                log.error("last-use times not saved: %s", exc)

        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        with contextlib.suppress(IndexFailure):  # already closed
            await self._on_thread(close)
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def ping(self) -> None:
        def read(db: sqlite3.Connection) -> None:
            db.execute("SELECT count(*) FROM sqlite_schema").fetchone()

        await self._run(read)

    @staticmethod
    def _repo_id(db: sqlite3.Connection, repo: str) -> int:
        row = db.execute("SELECT id FROM repositories WHERE name = ?", (repo,)).fetchone()
        if row is not None:
            return int(row[0])
        cursor = db.execute(
            "INSERT INTO repositories (name, created_at) VALUES (?, ?)", (repo, time.time())
        )
        return int(cursor.lastrowid or 0)

    def _forget_tags(self) -> None:
        self._tags = {}

    def _tag_memory(self) -> bytes:
        """The tag memory, emptied if another process changed the index since it was
        filled; returns the generation it now belongs to."""
        return self._tags_watch.current()

    async def get_tag(self, repo: str, tag: str) -> Digest | None:
        generation = self._tag_memory()
        cached = self._tags.get((repo, tag))
        if cached is not None:
            return cached

        def get(db: sqlite3.Connection) -> Digest | None:
            row = db.execute(
                "SELECT t.digest FROM tags t JOIN repositories r ON r.id = t.repo_id"
                " WHERE r.name = ? AND t.tag = ?",
                (repo, tag),
            ).fetchone()
            return None if row is None else stored(row[0])

        found = await self._run(get)
        if found is None:
            return None
        self._remember_tag(repo, tag, found, generation)
        return found

    async def set_tag(self, repo: str, tag: str, digest: Digest) -> None:
        generation = self._tag_memory()
        if self._tags.get((repo, tag)) == digest:
            return  # unchanged: no write on the hot path

        def put(db: sqlite3.Connection) -> bool:
            # One write transaction from the repository's id to the tag row, and only
            # for a manifest the index has: a removal in another process (prune) can
            # neither delete the repository in between nor leave the tag dangling.
            if not db.execute(
                "SELECT 1 FROM manifests WHERE digest = ?", (str(digest),)
            ).fetchone():
                return False
            repo_id = self._repo_id(db, repo)
            db.execute(
                "INSERT INTO tags (repo_id, tag, digest, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (repo_id, tag) DO UPDATE SET digest = excluded.digest,"
                " updated_at = excluded.updated_at",
                (repo_id, tag, str(digest), time.time()),
            )
            return True

        if await self._run(put, write=True):
            self._remember_tag(repo, tag, digest, generation)

    def _remember_tag(self, repo: str, tag: str, digest: Digest, generation: bytes) -> None:
        """The tag → digest memory that keeps unchanged tags off the disk; bounded. What
        was read or written before another process changed the index is not kept."""
        if not self._tags_watch.still(generation):
            return
        if len(self._tags) >= MAX_REMEMBERED_TAGS:
            self._tags.clear()
        self._tags[(repo, tag)] = digest

    async def delete_tag(self, repo: str, tag: str) -> None:
        self._tags.pop((repo, tag), None)
        await self._run(
            lambda db: db.execute(
                "DELETE FROM tags WHERE tag = ? AND repo_id ="
                " (SELECT id FROM repositories WHERE name = ?)",
                (tag, repo),
            ),
            write=True,
        )

    async def list_tags(self, repo: str) -> list[str]:
        def get(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT t.tag FROM tags t JOIN repositories r ON r.id = t.repo_id"
                " WHERE r.name = ? ORDER BY t.tag",
                (repo,),
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._run(get)

    async def put_manifest(
        self, repo: str | None, record: ManifestRecord, references: list[Digest]
    ) -> None:
        def put(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO manifests (digest, media_type, size) VALUES (?, ?, ?)",
                (str(record.digest), record.media_type, record.size),
            )
            db.executemany(
                "INSERT OR IGNORE INTO manifest_refs (manifest, child) VALUES (?, ?)",
                [(str(record.digest), str(ref)) for ref in references],
            )
            self._add_content(db, repo, record.digest, record.size)

        await self._run(put, write=True)

    async def get_manifest(self, digest: Digest) -> ManifestRecord | None:
        def get(db: sqlite3.Connection) -> ManifestRecord | None:
            row = db.execute(
                "SELECT media_type, size FROM manifests WHERE digest = ?", (str(digest),)
            ).fetchone()
            return None if row is None else ManifestRecord(digest, str(row[0]), int(row[1]))

        return await self._run(get)

    async def linked(self, repo: str, digest: Digest) -> bool:
        def get(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM repo_content c JOIN repositories r ON r.id = c.repo_id"
                " WHERE r.name = ? AND c.digest = ?",
                (repo, str(digest)),
            ).fetchone()
            return row is not None

        return await self._run(get)

    async def link(self, repo: str, digest: Digest) -> list[Digest]:
        def put(db: sqlite3.Connection) -> list[Digest]:
            reached = [
                str(row[0])
                for row in db.execute(
                    "WITH RECURSIVE reach(d) AS (SELECT ? UNION"
                    " SELECT m.child FROM manifest_refs m JOIN reach ON m.manifest = reach.d)"
                    " SELECT d FROM reach LIMIT ?",
                    (str(digest), MAX_LINKED),
                )
            ]
            repo_id = self._repo_id(db, repo)
            db.executemany(
                "INSERT OR IGNORE INTO repo_content (repo_id, digest) VALUES (?, ?)",
                [(repo_id, d) for d in reached],
            )
            return [stored(d) for d in reached]

        return await self._run(put, write=True)

    async def put_blob(self, repo: str | None, digest: Digest, size: int) -> None:
        await self._run(lambda db: self._add_content(db, repo, digest, size), write=True)

    def _add_content(
        self, db: sqlite3.Connection, repo: str | None, digest: Digest, size: int
    ) -> None:
        """A blob or manifest row, and which repository it came through (if known)."""
        now = time.time()
        db.execute(
            "INSERT OR IGNORE INTO blobs (digest, size, created_at, last_access)"
            " VALUES (?, ?, ?, ?)",
            (str(digest), size, now, now),
        )
        if repo is not None:
            db.execute(
                "INSERT OR IGNORE INTO repo_content (repo_id, digest) VALUES (?, ?)",
                (self._repo_id(db, repo), str(digest)),
            )

    async def repositories(self) -> list[str]:
        def get(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT name FROM repositories ORDER BY name").fetchall()
            return [str(row[0]) for row in rows]

        return await self._run(get)

    async def snapshot(self) -> CacheSnapshot:
        await self.flush()

        return await self._run(read_snapshot)

    async def items(self, digests: list[Digest]) -> dict[Digest, CacheItem]:
        def get(db: sqlite3.Connection) -> dict[Digest, CacheItem]:
            found: dict[Digest, CacheItem] = {}
            for digest in digests:
                row = db.execute(
                    "SELECT b.size, b.created_at, b.last_access, b.hits, m.media_type"
                    " FROM blobs b LEFT JOIN manifests m ON m.digest = b.digest"
                    " WHERE b.digest = ?",
                    (str(digest),),
                ).fetchone()
                if row is not None:
                    size, created, last, hits, media_type = row
                    found[digest] = CacheItem(
                        digest, int(size), float(created), float(last), int(hits), media_type
                    )
            return found

        return with_buffered(await self._run(get), self._touched)

    async def remove(self, digests: list[Digest]) -> None:
        if not digests:
            return

        def delete(db: sqlite3.Connection) -> None:
            delete_rows(db, digests)
            drop_empty_repositories(db)

        await self._run(delete, write=True)
        self._forget(digests)

    async def evict(self, digests: list[Digest]) -> list[Digest]:
        if not digests:
            return []
        gone = await self._run(lambda db: remove_unreferenced(db, digests, None), write=True)
        self._forget(gone)
        return gone

    # --- for operator commands: small transactions that re-check before removing ----

    async def known(self, digests: list[Digest]) -> set[Digest]:
        """Which of ``digests`` have a row now."""

        def get(db: sqlite3.Connection) -> set[Digest]:
            found: set[Digest] = set()
            for digest in digests:
                if db.execute("SELECT 1 FROM blobs WHERE digest = ?", (str(digest),)).fetchone():
                    found.add(digest)
            return found

        return await self._run(get)

    async def remove_unused(
        self, digests: list[Digest], *, scope: list[str] | None
    ) -> list[Digest]:
        """Remove each digest's rows, in order, unless (checked inside the transaction)
        a manifest still references it or, with ``scope`` (repository names), a
        repository outside it tags or links it. Returns the digests removed."""

        def delete(db: sqlite3.Connection) -> list[Digest]:
            inside = None if scope is None else ids(db, scope)
            return remove_unreferenced(db, digests, inside)

        removed = await self._run(delete, write=True)
        self._forget(removed)
        return removed

    async def unlink(self, repos: list[str], digests: list[Digest]) -> None:
        """Forget that ``repos`` hold ``digests`` (their tags naming them, their links to
        them); the content stays for the other repositories. Empty repositories go."""

        def delete(db: sqlite3.Connection) -> None:
            for repo_id in ids(db, repos):
                for digest in map(str, digests):
                    db.execute(
                        "DELETE FROM tags WHERE repo_id = ? AND digest = ?", (repo_id, digest)
                    )
                    db.execute(
                        "DELETE FROM repo_content WHERE repo_id = ? AND digest = ?",
                        (repo_id, digest),
                    )
            drop_empty_repositories(db)

        await self._run(delete, write=True)
        gone = set(digests)
        self._tags = {
            key: value
            for key, value in self._tags.items()
            if key[0] not in repos or value not in gone
        }

    async def remove_dangling_tags(self, digests: list[Digest]) -> int:
        """Delete tags naming one of ``digests`` if (checked in the transaction) no
        manifest row exists for it. Returns the tags deleted."""

        def delete(db: sqlite3.Connection) -> int:
            count = 0
            for digest in map(str, digests):
                cursor = db.execute(
                    "DELETE FROM tags WHERE digest = ?"
                    " AND NOT EXISTS (SELECT 1 FROM manifests WHERE digest = ?)",
                    (digest, digest),
                )
                count += cursor.rowcount
            drop_empty_repositories(db)
            return count

        count = await self._run(delete, write=True)
        self._forget(digests)
        return count

    def _forget(self, digests: list[Digest]) -> None:
        gone = set(digests)
        self._tags = {key: value for key, value in self._tags.items() if value not in gone}
        for digest in digests:
            self._touched.pop(digest, None)

    def touch(self, digest: Digest) -> None:
        _, hits = self._touched.get(digest, (0.0, 0))
        self._touched[digest] = (time.time(), hits + 1)

    async def flush(self) -> None:
        if not self._touched:
            return
        batch, self._touched = self._touched, {}
        await self._run(
            lambda db: db.executemany(
                "UPDATE blobs SET last_access = MAX(last_access, ?), hits = hits + ?"
                " WHERE digest = ?",
                [(ts, hits, str(digest)) for digest, (ts, hits) in batch.items()],
            ),
            write=True,
        )
