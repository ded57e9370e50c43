"""SQLiteIndex on a real database file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from registry_mirror.index import IndexFailure, ManifestRecord, SQLiteIndex
from registry_mirror.reference import Digest


def test_tags_manifests_blobs_and_last_use(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    manifest = Digest.of(b"manifest")
    layer = Digest.of(b"layer")

    async def first_run() -> None:
        index = SQLiteIndex(path)
        await index.open()
        assert await index.get_tag("library/alpine", "3.20") is None
        await index.put_manifest(
            "library/alpine", ManifestRecord(manifest, "application/x", 8), [layer]
        )
        await index.set_tag("library/alpine", "3.20", manifest)
        await index.put_blob("library/alpine", layer, 5)
        await index.put_blob("team/app", layer, 5)
        index.touch(layer)
        index.touch(layer)
        await index.close()

    async def second_run() -> None:
        index = SQLiteIndex(path)
        await index.open()
        assert await index.get_tag("library/alpine", "3.20") == manifest
        assert await index.list_tags("library/alpine") == ["3.20"]
        record = await index.get_manifest(manifest)
        assert record == ManifestRecord(manifest, "application/x", 8)
        assert await index.repositories() == ["library/alpine", "team/app"]
        await index.delete_tag("library/alpine", "3.20")
        assert await index.get_tag("library/alpine", "3.20") is None
        await index.close()

    asyncio.run(first_run())
    asyncio.run(second_run())
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT hits FROM blobs WHERE digest = ?", (str(layer),)).fetchone()[0] == 2
    refs = db.execute("SELECT child FROM manifest_refs WHERE manifest = ?", (str(manifest),))
    assert refs.fetchall() == [(str(layer),)]


def test_removal_by_digest_uses_indexes(tmp_path: Path) -> None:
    """Every evicted digest is looked up in tags, repo_content and manifest_refs: by an
    index, not a scan of the table."""
    asyncio.run(_open_and_close(tmp_path / "index.db"))
    db = sqlite3.connect(tmp_path / "index.db")
    for query in (
        "DELETE FROM tags WHERE digest = ?",
        "DELETE FROM repo_content WHERE digest = ?",
        "SELECT 1 FROM manifest_refs WHERE child = ? LIMIT 1",
        "DELETE FROM manifest_refs WHERE manifest = ?",
    ):
        plan = " ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}", ("x",)))
        assert "USING" in plan and "INDEX" in plan, (query, plan)


async def _open_and_close(path: Path) -> None:
    index = SQLiteIndex(path)
    await index.open()
    await index.close()


def test_an_index_made_before_the_digest_indexes_opens_and_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    asyncio.run(_open_and_close(path))
    db = sqlite3.connect(path)
    for name in ("tags_digest", "repo_content_digest", "manifest_refs_child"):
        db.execute(f"DROP INDEX {name}")
    db.execute("INSERT INTO blobs VALUES ('sha256:aa', 1, 0, 0, 0)")
    db.commit()
    db.close()
    asyncio.run(_open_and_close(path))
    db = sqlite3.connect(path)
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"tags_digest", "repo_content_digest", "manifest_refs_child"} <= names
    assert db.execute("SELECT digest FROM blobs").fetchall() == [("sha256:aa",)]


def test_an_index_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    asyncio.run(_open_and_close(path))
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(IndexFailure, match="newer than this version"):
        asyncio.run(_open_and_close(path))
