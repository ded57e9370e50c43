"""Blob storage: the :class:`BlobStore` seam, its capabilities and implementations."""

from registry_mirror.storage.base import (
    BlobInfo,
    BlobStore,
    Capacity,
    Census,
    Delivery,
    DigestMismatch,
    LocalFile,
    LocalFiles,
    LocalStagedReader,
    Redirect,
    StagedBlob,
    StagedReader,
    Staging,
    StorageError,
    Stream,
    sizes_on_disk,
    stored_bytes,
)
from registry_mirror.storage.filesystem import FilesystemBlobStore

__all__ = [
    "BlobInfo",
    "BlobStore",
    "Capacity",
    "Census",
    "Delivery",
    "DigestMismatch",
    "FilesystemBlobStore",
    "LocalFile",
    "LocalFiles",
    "LocalStagedReader",
    "Redirect",
    "StagedBlob",
    "StagedReader",
    "Staging",
    "StorageError",
    "Stream",
    "sizes_on_disk",
    "stored_bytes",
]
