"""The Index seam: the small metadata store beside the blobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from registry_mirror.reference import Digest

__all__ = ["Index", "IndexError_", "ManifestRecord"]


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    digest: Digest
    media_type: str
    size: int


class IndexError_(Exception):
    """The index database could not be read or written."""


class Index(Protocol):
    """Repositories, tag → digest, manifest media types, blob sizes, last use.

    Last-use updates (:meth:`touch`) are buffered and written in batches, so
    serving a cache hit costs no database write.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get_tag(self, repo: str, tag: str) -> Digest | None: ...

    async def set_tag(self, repo: str, tag: str, digest: Digest) -> None: ...

    async def delete_tag(self, repo: str, tag: str) -> None: ...

    async def list_tags(self, repo: str) -> list[str]: ...

    async def put_manifest(
        self, repo: str, record: ManifestRecord, references: list[Digest]
    ) -> None:
        """Record a manifest seen through ``repo`` and the blobs/manifests it references."""
        ...

    async def get_manifest(self, digest: Digest) -> ManifestRecord | None: ...

    async def put_blob(self, repo: str, digest: Digest, size: int) -> None: ...

    async def repositories(self) -> list[str]: ...

    def touch(self, digest: Digest) -> None:
        """Note a cache hit (buffered)."""
        ...

    async def flush(self) -> None:
        """Write buffered last-use updates."""
        ...
