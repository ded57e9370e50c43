"""Upstream registries: the :class:`Upstream` protocol the mirror uses, its results and
typed errors, and :class:`RegistryClient`, the HTTP client that implements it."""

from registry_mirror.upstream.base import BlobStream, ManifestInfo, TagList, Upstream
from registry_mirror.upstream.client import MAX_TAG_PAGES, RegistryClient
from registry_mirror.upstream.errors import (
    UpstreamAuthFailed,
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from registry_mirror.upstream.transport import Sessions

__all__ = [
    "MAX_TAG_PAGES",
    "BlobStream",
    "ManifestInfo",
    "RegistryClient",
    "Sessions",
    "TagList",
    "Upstream",
    "UpstreamAuthFailed",
    "UpstreamDigestMismatch",
    "UpstreamError",
    "UpstreamNotFound",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
]
