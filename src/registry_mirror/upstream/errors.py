"""The tree of upstream failures, translated to OCI errors at one place in ``api/``."""

from __future__ import annotations

__all__ = [
    "UpstreamAuthFailed",
    "UpstreamDigestMismatch",
    "UpstreamError",
    "UpstreamNotFound",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamUnavailable",
]


class UpstreamError(Exception):
    """Base of every failure talking to an upstream registry."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamUnavailable(UpstreamError):
    """Connection refused or reset, timeout, or a 5xx answer."""


class UpstreamRateLimited(UpstreamError):
    """429 Too Many Requests; ``retry_after`` in seconds when upstream said."""

    def __init__(self, message: str, retry_after: int | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamAuthFailed(UpstreamError):
    """The upstream refused our credentials (or anonymous access)."""


class UpstreamNotFound(UpstreamError):
    """The upstream says the repository, manifest or blob does not exist."""


class UpstreamDigestMismatch(UpstreamError):
    """Content from upstream did not hash to the digest or length announced."""


class UpstreamProtocolError(UpstreamError):
    """An answer that breaks the distribution protocol (bad headers, oversized manifest…)."""
