"""Tag lists: from upstream, kept briefly for the following pages; the cached tags when
upstream cannot be asked."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from registry_mirror.index import Index
from registry_mirror.logs import ThrottledLog
from registry_mirror.mirror.routing import Route
from registry_mirror.mirror.singleflight import SingleFlight
from registry_mirror.outcome import CacheResult, Outcome
from registry_mirror.upstream import MAX_TAG_PAGES, UpstreamRateLimited, UpstreamUnavailable

__all__ = ["TagListing", "TagLists"]

log = logging.getLogger(__name__)

TAG_LIST_TTL: Final = 30.0  # a tag list read from upstream serves the following pages
MAX_TAG_LISTS: Final = 256


@dataclass(frozen=True, slots=True)
class TagListing:
    tags: list[str]
    stale: bool = False  # upstream could not be asked: the tags the cache knows
    truncated: bool = False  # upstream has more pages than the mirror reads


class TagLists:
    def __init__(self, index: Index) -> None:
        self.index = index
        self._tag_lists: OrderedDict[str, tuple[float, TagListing]] = OrderedDict()
        self._tag_listings: SingleFlight[str, TagListing] = SingleFlight("tag lists")
        self._stale_log = ThrottledLog(log)  # once a minute per repository

    async def tags(
        self, route: Route, *, fresh: bool = True, outcome: Outcome | None = None
    ) -> TagListing:
        """Tags from upstream; the cached ones when upstream cannot be asked.

        The full upstream list is kept for a short while, so the following pages of a
        paginated listing (``fresh=False``) do not read every upstream page again.
        ``outcome`` is told how: hit (a list read a moment ago), miss (read from
        upstream), coalesced (another request's read), stale (the cached tags).
        """
        outcome = outcome or Outcome()
        now = time.monotonic()
        remembered = self._tag_lists.get(route.key)
        if not fresh and remembered is not None and remembered[0] > now:
            outcome.result = CacheResult.HIT
            return remembered[1]
        outcome.result = (
            CacheResult.COALESCED if route.key in self._tag_listings else CacheResult.MISS
        )
        try:
            listing = await self._tag_listings.run(route.key, lambda: self._list_tags(route))
        except (UpstreamUnavailable, UpstreamRateLimited) as exc:
            cached = await self.index.list_tags(route.key)
            if not cached:
                raise
            outcome.result = CacheResult.STALE
            self._stale_log(
                f"tags {route.key}",
                logging.WARNING,
                "upstream unusable (%s); listing cached tags of %s",
                exc,
                route,
            )
            return TagListing(cached, stale=True)
        self._tag_lists[route.key] = (now + TAG_LIST_TTL, listing)
        self._tag_lists.move_to_end(route.key)
        while len(self._tag_lists) > MAX_TAG_LISTS:
            self._tag_lists.popitem(last=False)
        return listing

    async def _list_tags(self, route: Route) -> TagListing:
        tags = await route.upstream.list_tags(route.repo)
        truncated = tags.truncated
        if truncated:
            self._stale_log(
                f"tags truncated {route.key}",
                logging.WARNING,
                "tag list of %s cut at %d upstream pages (%d tags)",
                route,
                MAX_TAG_PAGES,
                len(tags),
            )
        return TagListing(sorted(set(tags)), truncated=truncated)
