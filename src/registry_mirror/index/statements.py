"""The SQLite index's schema and the statements that work over many rows (snapshot,
removals): functions of a connection, run on the index thread by :class:`SQLiteIndex`."""

from __future__ import annotations

import sqlite3
from typing import Final

from registry_mirror.index.base import CacheItem, CacheSnapshot
from registry_mirror.reference import Digest

__all__ = [
    "MAX_LINKED",
    "MAX_REMEMBERED_TAGS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "delete_rows",
    "drop_empty_repositories",
    "ids",
    "read_snapshot",
    "remove_unreferenced",
    "stored",
    "users",
]

SCHEMA_VERSION: Final = 1
MAX_REMEMBERED_TAGS: Final = 50_000
MAX_LINKED: Final = 100_000  # digests one link() may reach (an index of images of layers)
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS repositories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    repo_id INTEGER NOT NULL REFERENCES repositories(id),
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (repo_id, tag)
);
CREATE TABLE IF NOT EXISTS manifests (
    digest TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS manifest_refs (
    manifest TEXT NOT NULL,
    child TEXT NOT NULL,
    PRIMARY KEY (manifest, child)
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS repo_content (
    repo_id INTEGER NOT NULL REFERENCES repositories(id),
    digest TEXT NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
-- Lookups by digest when content is removed (the keys above start with another column).
-- Indexes change no row: an index of this schema without them is the same version.
CREATE INDEX IF NOT EXISTS tags_digest ON tags (digest);
CREATE INDEX IF NOT EXISTS repo_content_digest ON repo_content (digest);
CREATE INDEX IF NOT EXISTS manifest_refs_child ON manifest_refs (child);
"""


_ALGORITHMS: Final = {"sha256": "sha256", "sha512": "sha512"}


def stored(text: str) -> Digest:
    """A digest as the index stores it (``algorithm:hex``, validated when written): split,
    not parsed again; the algorithm's name is shared by every digest read."""
    algorithm, _, hex_ = text.partition(":")
    return Digest(_ALGORITHMS.get(algorithm, algorithm), hex_)


def read_snapshot(db: sqlite3.Connection) -> CacheSnapshot:
    """Everything the index holds, in one read transaction."""
    # One Digest per stored digest, however many rows name it: built once (a
    # snapshot can hold millions of rows), then found by its text.
    digests: dict[str, Digest] = {}
    known = digests.get

    def digest_of(text: str) -> Digest:
        found = known(text)
        if found is None:
            found = digests[text] = stored(text)
        return found

    # The manifests' media types by text rather than a join: a lookup in memory
    # per blob row costs far less than one in the manifests table.
    media_types = dict(db.execute("SELECT digest, media_type FROM manifests"))
    media_type = media_types.get
    items: dict[Digest, CacheItem] = {}
    for text, size, created_at, last_access, hits in db.execute(
        "SELECT digest, size, created_at, last_access, hits FROM blobs"
    ):
        digest = digests[text] = stored(text)
        items[digest] = CacheItem(
            digest,
            int(size),
            float(created_at),
            float(last_access),
            int(hits),
            media_type(text),
        )
    refs: dict[Digest, list[Digest]] = {}
    children: list[Digest] = []
    last = None
    for manifest, text in db.execute("SELECT manifest, child FROM manifest_refs ORDER BY manifest"):
        if manifest != last:  # a manifest's references come together
            children = refs[digest_of(manifest)] = []
            last = manifest
        children.append(digest_of(text))
    tags: list[tuple[str, str, Digest]] = []
    for name, tag, text in db.execute(
        "SELECT r.name, t.tag, t.digest FROM tags t"
        " JOIN repositories r ON r.id = t.repo_id ORDER BY r.name, t.tag"
    ):
        tags.append((str(name), str(tag), digest_of(text)))
    content: dict[str, set[Digest]] = {}
    for name, text in db.execute(
        "SELECT r.name, c.digest FROM repo_content c JOIN repositories r ON r.id = c.repo_id"
    ):
        content.setdefault(str(name), set()).add(digest_of(text))
    return CacheSnapshot(items, refs, tags, content)


def ids(db: sqlite3.Connection, repos: list[str]) -> set[int]:
    ids: set[int] = set()
    for repo in repos:
        row = db.execute("SELECT id FROM repositories WHERE name = ?", (repo,)).fetchone()
        if row is not None:
            ids.add(int(row[0]))
    return ids


def delete_rows(db: sqlite3.Connection, digests: list[Digest]) -> None:
    """Every row of these digests: tags naming them, their references, manifest and blob
    rows, repository links (empty repositories are dropped by the caller)."""
    rows = [(str(digest),) for digest in digests]
    db.executemany("DELETE FROM tags WHERE digest = ?", rows)
    db.executemany("DELETE FROM manifest_refs WHERE manifest = ?", rows)
    db.executemany("DELETE FROM manifests WHERE digest = ?", rows)
    db.executemany("DELETE FROM repo_content WHERE digest = ?", rows)
    db.executemany("DELETE FROM blobs WHERE digest = ?", rows)


def remove_unreferenced(
    db: sqlite3.Connection, digests: list[Digest], inside: set[int] | None
) -> list[Digest]:
    """Delete each digest's rows unless a manifest that stays references it or (with
    ``inside``, repository ids) a repository outside those tags or links it: checked in
    the transaction that deletes, so content stored since a plan was made stays. Parents
    usually come before their children; a child met first is tried again once its parent
    went. Returns the digests removed, in order."""
    removed: list[Digest] = []
    pending = list(digests)
    while pending:
        kept: list[Digest] = []
        for digest in pending:
            referenced = db.execute(
                "SELECT 1 FROM manifest_refs WHERE child = ? LIMIT 1", (str(digest),)
            ).fetchone()
            if referenced or (inside is not None and users(db, digest) - inside):
                kept.append(digest)
                continue
            delete_rows(db, [digest])
            removed.append(digest)
        if len(kept) == len(pending):
            break
        pending = kept
    drop_empty_repositories(db)
    return removed


def users(db: sqlite3.Connection, digest: Digest) -> set[int]:
    """The repositories that tag or link ``digest``."""
    text = str(digest)
    return {
        int(row[0])
        for row in db.execute(
            "SELECT repo_id FROM tags WHERE digest = ?"
            " UNION SELECT repo_id FROM repo_content WHERE digest = ?",
            (text, text),
        )
    }


def drop_empty_repositories(db: sqlite3.Connection) -> None:
    db.execute(
        "DELETE FROM repositories WHERE id NOT IN (SELECT repo_id FROM tags)"
        " AND id NOT IN (SELECT repo_id FROM repo_content)"
    )
