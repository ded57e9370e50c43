"""What the cache holds: ``ls`` (tags with their sizes and use) and ``du`` (usage)."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry_mirror.config import Settings
from registry_mirror.index import CacheSnapshot
from registry_mirror.maintenance.cache import Cache
from registry_mirror.mirror.eviction import images_of, used_bytes
from registry_mirror.reference import Digest
from registry_mirror.storage import Capacity

__all__ = ["Naming", "RepoTag", "UsageReport", "closure", "list_tags", "usage"]


@dataclass(frozen=True, slots=True)
class RepoTag:
    repository: str
    tag: str
    digest: Digest
    size: int
    last_use: float
    hits: int
    complete: bool  # every referenced blob is cached


def closure(snapshot: CacheSnapshot, root: Digest) -> set[Digest]:
    members: set[Digest] = set()
    stack = [root]
    while stack:
        current = stack.pop()
        if current in members:
            continue
        members.add(current)
        stack.extend(snapshot.refs.get(current, ()))
    return members


def list_tags(snapshot: CacheSnapshot) -> list[RepoTag]:
    rows = []
    for repo, tag, digest in snapshot.tags:
        members = closure(snapshot, digest)
        present = [snapshot.items[m] for m in members if m in snapshot.items]
        manifest = snapshot.items.get(digest)
        rows.append(
            RepoTag(
                repo,
                tag,
                digest,
                size=sum(item.size for item in present),
                last_use=manifest.last_access if manifest else 0.0,
                hits=manifest.hits if manifest else 0,
                complete=len(present) == len(members),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class UsageReport:
    disk_bytes: int  # measured on the store's disk (the indexed bytes if it has none)
    indexed_bytes: int
    blobs: int
    manifests: int
    shared_bytes: int  # content referenced by more than one image
    unique_bytes: int
    free_bytes: int | None
    repositories: int


async def usage(cache: Cache) -> UsageReport:
    snapshot = await cache.index.snapshot()
    holders: dict[Digest, int] = {}
    for image in images_of(snapshot):
        for member in image.members:
            holders[member] = holders.get(member, 0) + 1
    shared = sum(item.size for d, item in snapshot.items.items() if holders.get(d, 0) > 1)
    indexed = sum(item.size for item in snapshot.items.values())
    store = cache.store
    return UsageReport(
        disk_bytes=await used_bytes(store, cache.index),
        indexed_bytes=indexed,
        blobs=sum(1 for item in snapshot.items.values() if item.media_type is None),
        manifests=sum(1 for item in snapshot.items.values() if item.media_type is not None),
        shared_bytes=shared,
        unique_bytes=indexed - shared,
        free_bytes=await store.free_space() if isinstance(store, Capacity) else None,
        repositories=len({repo for repo, _, _ in snapshot.tags} | set(snapshot.content)),
    )


@dataclass(frozen=True, slots=True)
class Naming:
    """Repository names as ``ls`` shows them and a person types them: ``alpine`` and
    ``library/alpine`` on the default registry (Docker Hub naming), ``ghcr.io/o/i`` (or an
    alias) for the others, ``docker.io/library/alpine`` in full."""

    default: str = "docker.io"
    names: dict[str, str] = field(default_factory=lambda: {"docker.io": "docker.io"})
    dockerhub: frozenset[str] = frozenset({"docker.io"})

    @classmethod
    def from_settings(cls, settings: Settings) -> Naming:
        names: dict[str, str] = {}
        dockerhub = {"docker.io"}
        for upstream in settings.all_upstreams():
            for name in upstream.registry_names:
                names[name] = upstream.registry_name
            if upstream.is_dockerhub:
                dockerhub.add(upstream.registry_name)
        return cls(settings.proxy.registry_name, names, frozenset(dockerhub))

    def key(self, pattern: str) -> str:
        """The cache key (``registry/repository``) a pattern means."""
        first, sep, rest = pattern.partition("/")
        if sep and first.lower() in self.names:
            registry, repo = self.names[first.lower()], rest
        elif sep and ("." in first or ":" in first or first == "localhost"):
            registry, repo = first.lower(), rest
        else:
            registry, repo = self.default, pattern
        if registry in self.dockerhub and "/" not in repo:
            repo = f"library/{repo}"
        return f"{registry}/{repo}"
