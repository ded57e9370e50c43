"""SQLiteIndex on a real database file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from registry_mirror.index import ManifestRecord, SQLiteIndex
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
