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
from registry_mirror.upstream.transport import Sessions

__all__ = [
    "MAX_TAG_PAGES",
    "BlobStream",
    "ManifestInfo",
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
