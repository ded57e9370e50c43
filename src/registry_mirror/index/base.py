"""The Index seam: the small metadata store beside the blobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from registry_mirror.reference import Digest

__all__ = [
    "CacheItem",
    "CacheSnapshot",
    "GenerationWatch",
    "Index",
    "IndexFailure",
    "ManifestRecord",
    "with_buffered",
]


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class CacheItem:
    """One cached blob or manifest, as the index knows it."""

    digest: Digest
    size: int
    created_at: float
    last_access: float
    hits: int
    media_type: str | None  # set for manifests


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """Everything the index knows, for eviction, ``ls``, ``du`` and ``verify``."""

    items: dict[Digest, CacheItem]
    refs: dict[Digest, list[Digest]]  # manifest → referenced digests
    tags: list[tuple[str, str, Digest]]  # (repository, tag, digest)
    content: dict[str, set[Digest]]  # repository → digests seen through it


class IndexFailure(Exception):
    """The index database could not be read or written."""


class Index(Protocol):
    """Repositories, tag → digest, manifest media types, blob sizes, last use.

    Last-use updates (:meth:`touch`) are buffered and written in batches, so
    serving a cache hit costs no database write.
    """

    async def open(self) -> None: ...

    def generation(self) -> bytes:
        """Changes when another process (an operator command) may have changed the
        index: what was remembered of it under another value is not to be trusted."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """A trivial read of the database, for the health checks; IndexFailure if it
        cannot be read."""
        ...

    async def get_tag(self, repo: str, tag: str) -> Digest | None: ...

    async def set_tag(self, repo: str, tag: str, digest: Digest) -> None: ...

    async def delete_tag(self, repo: str, tag: str) -> None: ...

    async def list_tags(self, repo: str) -> list[str]: ...

    async def put_manifest(
        self, repo: str | None, record: ManifestRecord, references: list[Digest]
    ) -> None:
        """Record a manifest seen through ``repo`` (None: not known, as for a file found
        after a crash) and the blobs/manifests it references."""
        ...

    async def get_manifest(self, digest: Digest) -> ManifestRecord | None: ...

    async def linked(self, repo: str, digest: Digest) -> bool:
        """Whether ``digest`` was seen through ``repo`` (fetched or confirmed there, or
        referenced by a manifest linked to it): only then is it served under ``repo``."""
        ...

    async def link(self, repo: str, digest: Digest) -> list[Digest]:
        """Link ``digest`` and everything its manifests reference (as far as the index
        knows the references) to ``repo``; returns the digests linked."""
        ...

    async def put_blob(self, repo: str | None, digest: Digest, size: int) -> None: ...

    async def repositories(self) -> list[str]: ...

    async def snapshot(self) -> CacheSnapshot: ...

    async def items(self, digests: list[Digest]) -> dict[Digest, CacheItem]:
        """The rows of those of ``digests`` the index has (a few, unlike
        :meth:`snapshot`), last use and hits including the buffered ones."""
        ...

    async def remove(self, digests: list[Digest]) -> None:
        """Forget content: rows, references, tags pointing at it, empty repositories."""
        ...

    async def evict(self, digests: list[Digest]) -> list[Digest]:
        """Forget content, in order, like :meth:`remove` — but keep (and leave out of
        the answer) anything a manifest that stays still references, checked in the same
        transaction as the delete. Returns what was removed: only those files may go."""
        ...

    async def known(self, digests: list[Digest]) -> set[Digest]:
        """Which of ``digests`` have a row now."""
        ...

    async def remove_unused(
        self, digests: list[Digest], *, scope: list[str] | None
    ) -> list[Digest]:
        """Remove each digest's rows, in order, unless (checked inside the transaction)
        a manifest still references it or, with ``scope`` (repository names), a
        repository outside it tags or links it. Returns the digests removed."""
        ...

    async def unlink(self, repos: list[str], digests: list[Digest]) -> None:
        """Forget that ``repos`` hold ``digests`` (their tags naming them, their links to
        them); the content stays for the other repositories. Empty repositories go."""
        ...

    async def remove_dangling_tags(self, digests: list[Digest]) -> int:
        """Delete tags naming one of ``digests`` if (checked in the transaction) no
        manifest row exists for it. Returns the tags deleted."""
        ...

    def touch(self, digest: Digest) -> None:
        """Note a cache hit (buffered)."""
        ...

    async def flush(self) -> None:
        """Write buffered last-use updates."""
        ...


def with_buffered(
    items: dict[Digest, CacheItem], touched: dict[Digest, tuple[float, int]]
) -> dict[Digest, CacheItem]:
    """Rows read from an index with its buffered last uses (``touch``, not flushed yet)
    counted in."""
    result = dict(items)
    for digest, item in items.items():
        buffered = touched.get(digest)
        if buffered is not None:
            last, hits = buffered
            result[digest] = CacheItem(
                digest,
                item.size,
                item.created_at,
                max(item.last_access, last),
                item.hits + hits,
                item.media_type,
            )
    return result


class GenerationWatch:
    """For a memory of the index (tag → digest, manifest bodies, repository links): it is
    emptied (``forget``) whenever the index's generation changes, i.e. another process
    (an operator command) may have removed what it remembers. :meth:`current` returns the
    generation a value read now belongs to; a value is kept only if that is still current
    when it is stored (:meth:`still`), so a removal in between is never remembered over."""

    def __init__(self, generation: Callable[[], bytes], forget: Callable[[], None]) -> None:
        self._generation = generation
        self._forget = forget
        self._seen = generation()

    def current(self) -> bytes:
        now = self._generation()
        if now != self._seen:
            self._forget()
            self._seen = now
        return now

    def still(self, generation: bytes) -> bool:
        return self.current() == generation
