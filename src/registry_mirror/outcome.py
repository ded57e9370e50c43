"""What the cache did for one request, recorded where it is known (the mirror's
manifests, blobs, fills and tag lists) and read by the API layer once the answer is out:
by the metrics and by the access log, from this one record."""

from __future__ import annotations

import enum

__all__ = ["CacheResult", "Outcome"]


class CacheResult(enum.StrEnum):
    """How a request was answered, as far as the cache goes."""

    HIT = "hit"  # from the cache (memory or disk), upstream not asked
    MISS = "miss"  # fetched from upstream for this request (it led the download)
    STALE = "stale"  # from the cache because upstream could not be asked
    REVALIDATED = "revalidated"  # a tag confirmed with upstream, the content from the cache
    COALESCED = "coalesced"  # followed a download another request had started


class Outcome:
    """One request's record: which registry and repository it was for, and the cache
    result (None: no cache involved, or the request failed before one was known).
    Created by the API for each registry request and handed to the mirror."""

    __slots__ = ("registry", "repository", "result")

    def __init__(self, registry: str = "", repository: str = "") -> None:
        self.registry = registry
        self.repository = repository
        self.result: CacheResult | None = None

    def __repr__(self) -> str:
        return f"<Outcome {self.registry}/{self.repository}: {self.result}>"
