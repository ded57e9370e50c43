"""Clients of upstream registries and their typed errors."""

from registry_mirror.upstream.client import (
    MAX_TAG_PAGES,
    BlobStream,
    ManifestInfo,
    TagList,
    Upstream,
)
from registry_mirror.upstream.errors import (
    UpstreamAuthFailed,
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = [
    "MAX_TAG_PAGES",
    "BlobStream",
    "ManifestInfo",
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
