"""What the mirror needs of an upstream registry: the :class:`Upstream` protocol and its
results.

Nothing here knows the HTTP client: a fake upstream (tests, another transport) is written
against this module and :mod:`upstream.errors` alone. Every failure of an upstream leaves
as one of the typed errors of :mod:`upstream.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from registry_mirror.reference import Digest

__all__ = ["BlobStream", "ManifestInfo", "TagList", "Upstream"]


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """What a manifest HEAD (or GET) told: digest, media type, size."""

    digest: Digest | None
    media_type: str
    size: int | None


class TagList(list[str]):
    """Tags read from upstream; ``truncated`` when more pages followed than are read."""

    truncated: bool = False


class BlobStream(Protocol):
    """An open upstream blob download. ``size`` is the full blob size if known;
    ``offset`` is where the body starts (non-zero when a Range was honoured).

    :meth:`chunks` raises a typed upstream error when the download breaks off;
    :meth:`close` releases the connection (whether or not the body was read)."""

    @property
    def size(self) -> int | None: ...

    @property
    def offset(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    """One upstream registry, as the mirror uses it (the distribution API's read side).

    ``repo`` is the repository's name upstream (``library/alpine``); ``reference`` a tag
    or a digest. A 404 is :class:`~upstream.errors.UpstreamNotFound`, and so on.
    """

    @property
    def url(self) -> str:
        """The registry's base URL, e.g. ``https://registry-1.docker.io``."""
        ...

    def proxy_description(self) -> str | None:
        """The forward proxy the upstream is reached through, fit for a log (no
        credentials); None when direct."""
        ...

    async def head_manifest(self, repo: str, reference: str) -> ManifestInfo: ...

    async def get_manifest(self, repo: str, reference: str) -> tuple[ManifestInfo, bytes]:
        """The manifest's bytes exactly as upstream stores them; the caller verifies the
        digest on what is returned."""
        ...

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        """The blob's size (None when upstream did not say); raises when it is absent."""
        ...

    async def get_blob(
        self, repo: str, digest: Digest, offset: int = 0, end: int | None = None
    ) -> BlobStream:
        """Open a blob download of bytes ``[offset, end)`` (to its end when None); the
        caller closes the stream. An upstream that ignores the range may send more, from
        0 (the stream's ``offset`` says where it starts)."""
        ...

    async def list_tags(self, repo: str) -> TagList: ...
