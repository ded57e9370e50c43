"""Files committed just before a crash without their index row ("orphans"): verified and
indexed again (so they are counted and evictable), or removed if damaged. One policy,
used by the server at start and by ``verify --repair``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from registry_mirror.index import Index, IndexFailure, ManifestRecord
from registry_mirror.media_types import detect_manifest
from registry_mirror.mirror.manifests import MAX_MANIFEST_SIZE
from registry_mirror.reference import Digest
from registry_mirror.storage import BlobStore, StorageError

__all__ = ["Recovered", "adopt_orphans", "recover_orphan"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Recovered:
    adopted: int = 0
    removed: int = 0


async def recover_orphan(store: BlobStore, index: Index, digest: Digest) -> bool:
    """Index a file the index does not know when its content matches its name (True),
    else delete it (False). A manifest is indexed as one again, with its media type
    and references; which repository it came through is lost with the row, so it is
    linked to none. Raises IndexFailure when the index cannot take it (the file stays)."""
    ok, size = await store.verify(digest)
    if not ok:
        await store.delete(digest)
        return False
    parsed = None
    if size <= MAX_MANIFEST_SIZE:
        body = await store.read_all(digest, MAX_MANIFEST_SIZE)
        parsed = None if body is None else detect_manifest(body)
    if parsed is None:
        await index.put_blob(None, digest, size)
    else:
        record = ManifestRecord(digest, parsed.media_type, size)
        await index.put_manifest(None, record, parsed.references)
    return True


async def adopt_orphans(
    store: BlobStore, index: Index, busy: Callable[[Digest], bool]
) -> Recovered:
    """Recover every orphan, leaving alone those ``busy`` says are being written."""
    result = Recovered()
    try:
        snapshot = await index.snapshot()
        async for digest in store.iter_digests():
            if digest in snapshot.items or busy(digest):
                continue
            try:
                adopted = await recover_orphan(store, index, digest)
            except IndexFailure:
                await store.delete(digest)  # never leave a file the index does not know
                adopted = False
            if adopted:
                result.adopted += 1
            else:
                result.removed += 1
        if result.adopted or result.removed:
            log.info(
                "after an unclean stop: %d files indexed again, %d damaged removed",
                result.adopted,
                result.removed,
            )
    except (StorageError, IndexFailure) as exc:
        log.error("could not check the cache for unindexed files: %s", exc)
    return result
