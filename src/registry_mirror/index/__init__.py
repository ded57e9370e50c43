"""Metadata index: the :class:`Index` seam and the embedded SQLite implementation."""

from registry_mirror.index.base import Index, IndexError_, ManifestRecord
from registry_mirror.index.sqlite import SQLiteIndex

__all__ = ["Index", "IndexError_", "ManifestRecord", "SQLiteIndex"]
