"""Metadata index: the :class:`Index` seam and the embedded SQLite implementation."""

from registry_mirror.index.base import (
    CacheItem,
    CacheSnapshot,
    GenerationWatch,
    Index,
    IndexFailure,
    ManifestRecord,
)
from registry_mirror.index.sqlite import SQLiteIndex

__all__ = [
    "CacheItem",
    "CacheSnapshot",
    "GenerationWatch",
    "Index",
    "IndexFailure",
    "ManifestRecord",
    "SQLiteIndex",
]
