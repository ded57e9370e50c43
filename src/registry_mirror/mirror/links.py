"""Which repository may see which content: storage is shared by digest, access is not.

A digest is served under a repository only when the index links it there: it was
fetched through that repository, upstream confirmed it there (a ``HEAD``), or a
manifest linked there references it. The links live in the index (``repo_content``);
this module keeps the recently confirmed ones in memory so a cache hit costs no
database round trip.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from registry_mirror.index import GenerationWatch, Index
from registry_mirror.reference import Digest

__all__ = ["RepoLinks"]

REMEMBERED_LINKS: Final = 20_000


class RepoLinks:
    """``(repository key, digest)`` links: the index's, with an LRU of positive answers."""

    def __init__(self, index: Index, remembered: int = REMEMBERED_LINKS) -> None:
        self._index = index
        self._known: OrderedDict[tuple[str, Digest], None] = OrderedDict()
        self._limit = remembered
        # Another process (prune, verify --repair) may remove links: forget them then.
        self._watch = GenerationWatch(index.generation, self._forget_all)

    def __repr__(self) -> str:
        return f"<RepoLinks {len(self._known)} remembered>"

    def _forget_all(self) -> None:
        self._known = OrderedDict()

    def _remember(self, repo: str, digests: Iterable[Digest], generation: bytes) -> None:
        if not self._watch.still(generation):
            return  # the index changed while it was asked: not remembered over that
        for digest in digests:
            key = (repo, digest)
            self._known[key] = None
            self._known.move_to_end(key)
        while len(self._known) > self._limit:
            self._known.popitem(last=False)

    def remembered(self, repo: str, digest: Digest) -> bool:
        """Whether the link is remembered (then :meth:`linked` is true), without asking
        the index."""
        self._watch.current()
        key = (repo, digest)
        if key in self._known:
            self._known.move_to_end(key)
            return True
        return False

    async def linked(self, repo: str, digest: Digest) -> bool:
        """Whether ``digest`` may be served under ``repo`` from the cache."""
        generation = self._watch.current()
        if self.remembered(repo, digest):
            return True
        if await self._index.linked(repo, digest):
            self._remember(repo, [digest], generation)
            return True
        return False

    async def link(self, repo: str, digest: Digest) -> None:
        """Link ``digest`` (and what it references, as far as the index knows) to ``repo``."""
        generation = self._watch.current()
        self._remember(repo, await self._index.link(repo, digest), generation)

    def forget(self, digests: list[Digest]) -> None:
        """Content left the cache (eviction): its links go with its index rows."""
        gone = set(digests)
        for key in [k for k in self._known if k[1] in gone]:
            del self._known[key]
