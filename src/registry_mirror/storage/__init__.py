"""Blob storage: the :class:`BlobStore` seam and its implementations."""

from registry_mirror.storage.base import (
    BlobInfo,
    BlobStore,
    DigestMismatch,
    StagedBlob,
    StagedReader,
    StorageError,
)
from registry_mirror.storage.filesystem import FilesystemBlobStore

__all__ = [
    "BlobInfo",
    "BlobStore",
    "DigestMismatch",
    "FilesystemBlobStore",
    "StagedBlob",
    "StagedReader",
    "StorageError",
]
