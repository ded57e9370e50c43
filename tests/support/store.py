"""Where the mirror keeps things under its cache root, as its own store lays them out.

Tests that plant, damage or look for files in a cache go through these, so that the layout
lives in :meth:`FilesystemBlobStore.path_for` (and the store's directories) only.
"""

from __future__ import annotations

import functools
from pathlib import Path

from registry_mirror.reference import Digest, parse_digest
from registry_mirror.storage.filesystem import FilesystemBlobStore
from tests.support.waits import wait_until

__all__ = [
    "blob_file",
    "blobs_dir",
    "published",
    "staged_files",
    "staging_dir",
    "stored_files",
]


@functools.lru_cache(maxsize=64)
def _store(root: Path) -> FilesystemBlobStore:
    # Only its layout is used: its threads start on first I/O, which never comes.
    return FilesystemBlobStore(root)


def blob_file(root: Path, digest: str | Digest) -> Path:
    """The file holding the blob or manifest ``digest`` in the cache under ``root``."""
    parsed = parse_digest(digest) if isinstance(digest, str) else digest
    return _store(Path(root)).path_for(parsed)


def published(root: Path, digest: str | Digest, timeout: float = 10.0) -> bytes:
    """The content of a cached blob once published: a client is answered on the verdict
    on the digest, and the file is made durable and renamed into place right after."""
    path = blob_file(root, digest)
    wait_until(path.exists, timeout, message=f"{digest} never published")
    return path.read_bytes()


def blobs_dir(root: Path) -> Path:
    """The directory below which every committed blob of the cache lies."""
    return _store(Path(root)).blobs_dir


def staging_dir(root: Path) -> Path:
    """The directory of downloads in progress."""
    return _store(Path(root)).staging_dir


def stored_files(root: Path) -> list[Path]:
    """Every committed file of the cache, sorted."""
    return sorted(p for p in blobs_dir(root).rglob("*") if p.is_file())


def staged_files(root: Path) -> list[Path]:
    """The downloads in progress (or left behind), sorted."""
    return sorted(staging_dir(root).iterdir())
