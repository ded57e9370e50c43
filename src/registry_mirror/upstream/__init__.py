"""Clients of upstream registries and their typed errors."""

from registry_mirror.upstream.client import BlobStream, ManifestInfo, Upstream
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
    "BlobStream",
    "ManifestInfo",
    "Sessions",
    "Upstream",
    "UpstreamAuthFailed",
    "UpstreamDigestMismatch",
    "UpstreamError",
    "UpstreamNotFound",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
]
