"""Which upstream a request means, and whether it may be asked at all.

Clients say which registry they want in three ways: containerd's ``?ns=ghcr.io``, a
path prefix (``/v2/ghcr.io/owner/image/…``, or an alias such as ``/v2/hub/…``, what a
registries.conf mirror ``location = "mirror/ghcr.io"`` sends), or nothing (the default
upstream: Docker Engine, Kaniko). Only configured upstreams are ever contacted: a name
that looks like a registry host but is not configured is refused before any
connection, and so is a repository outside an upstream's allow list or inside its
deny list.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from registry_mirror.reference import RepoName
from registry_mirror.upstream import Upstream

__all__ = ["RegistryNotMirrored", "RepositoryDenied", "Route", "Router", "UpstreamEntry"]

# Routes resolved lately, by (name, namespace): the configuration never changes while the
# server runs, so every request for a repository after the first costs one lookup.
REMEMBERED_ROUTES: Final = 4096


class RegistryNotMirrored(Exception):
    """A client named a registry this mirror has no upstream for."""


class RepositoryDenied(Exception):
    """The repository is outside the upstream's allow list or inside its deny list."""


@dataclass(frozen=True, slots=True)
class UpstreamEntry:
    """One configured upstream and the names clients use for it."""

    name: str  # the registry's name: docker.io, ghcr.io, registry.example.com:5000
    upstream: Upstream
    aliases: frozenset[str] = frozenset()
    dockerhub: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def permits(self, repo: str) -> bool:
        if any(fnmatch.fnmatchcase(repo, pattern) for pattern in self.deny):
            return False
        return not self.allow or any(fnmatch.fnmatchcase(repo, p) for p in self.allow)


@dataclass(frozen=True, slots=True)
class Route:
    """A request's repository, resolved: which upstream, its name there, the cache key."""

    entry: UpstreamEntry
    repo: str  # as the upstream knows it: library/alpine
    key: str = field(init=False)  # as the cache keeps it: docker.io/library/alpine

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.entry.name}/{self.repo}")

    @property
    def upstream(self) -> Upstream:
        return self.entry.upstream

    def __str__(self) -> str:
        return self.key


def looks_like_registry(component: str) -> bool:
    """The reference grammar's rule: a first component with a dot (or ``localhost``) is
    a registry host, not a repository namespace."""
    return "." in component or component == "localhost"


class Router:
    def __init__(self, entries: Iterable[UpstreamEntry], default: str) -> None:
        self.entries = list(entries)
        self._by_name: dict[str, UpstreamEntry] = {}
        for entry in self.entries:
            for name in {entry.name, *entry.aliases}:
                self._by_name[name.lower()] = entry
        self.default = self._by_name[default.lower()]
        self._routes: dict[tuple[str, str | None], Route] = {}

    def __repr__(self) -> str:
        return f"<Router {[e.name for e in self.entries]} default={self.default.name}>"

    def entry(self, name: str) -> UpstreamEntry | None:
        return self._by_name.get(name.lower())

    def resolve(self, name: RepoName, namespace: str | None = None) -> Route:
        """The route for ``name`` (and containerd's ``namespace``); raises
        :class:`RegistryNotMirrored` or :class:`RepositoryDenied`. Remembered (refusals
        are not): the same name always resolves to the same route."""
        key = (name.value, namespace)
        route = self._routes.get(key)
        if route is None:
            route = self._resolve(name.value, namespace)
            if len(self._routes) >= REMEMBERED_ROUTES:
                del self._routes[next(iter(self._routes))]  # the oldest
            self._routes[key] = route
        return route

    def _resolve(self, value: str, namespace: str | None) -> Route:
        if namespace is not None:
            entry = self.entry(namespace)
            if entry is None:
                raise RegistryNotMirrored(f"registry {namespace[:100]!r} is not mirrored here")
            first, sep, rest = value.partition("/")
            if sep and self.entry(first) is entry:
                value = rest  # ?ns=docker.io with /v2/docker.io/library/x: the same thing
        else:
            first, sep, rest = value.partition("/")
            found = self.entry(first) if sep else None
            if found is not None:
                entry, value = found, rest
            elif sep and looks_like_registry(first):
                raise RegistryNotMirrored(f"registry {first!r} is not mirrored here")
            else:
                entry = self.default
        if entry.dockerhub and "/" not in value:
            value = f"library/{value}"
        if not entry.permits(value):
            raise RepositoryDenied(f"{entry.name}/{value} is not allowed by this mirror's policy")
        return Route(entry, value)

    def display(self, key: str) -> str:
        """A cache key as clients name it: the default registry's repositories plain
        (``library/alpine``), the others with their registry (``ghcr.io/o/i``)."""
        prefix = self.default.name + "/"
        return key.removeprefix(prefix) if key.startswith(prefix) else key
