"""Routes of the distribution API (read side): the route table, manifests, tags and
the catalog, and the blob handler (a blob's bytes leave through ``blob_transfer``).
HTTP only, no disks, no upstream details."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote

from aiohttp import web

from registry_mirror.api.access import ACCESS_KEY, CLIENT, USER
from registry_mirror.api.access_log import OUTCOME
from registry_mirror.api.blob_transfer import send_blob
from registry_mirror.api.errors import KIND, RegistryError
from registry_mirror.media_types import Accept
from registry_mirror.mirror import Mirror, Route
from registry_mirror.outcome import Outcome
from registry_mirror.reference import (
    Digest,
    RepoName,
    Tag,
    parse_digest,
    parse_reference,
    parse_repo_name,
)

__all__ = ["MIRROR_KEY", "setup_routes"]

MIRROR_KEY: Final = web.AppKey("mirror", Mirror)
MAX_PATH: Final = 1024
CATALOG_DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 10_000
READ_METHODS: Final = frozenset({"GET", "HEAD"})
STALE_WARNING: Final = '110 - "served from cache: upstream unavailable"'
TRUNCATED_WARNING: Final = '199 - "tag list truncated: upstream has more pages than are read"'
# What every request for the same repository, reference or manifest computes again
# otherwise: parsed names, references and Accept headers, manifest headers (immutable).
REMEMBERED: Final = 1024
MAX_REMEMBERED_ACCEPT: Final = 1024  # longer Accept headers are parsed every time

_repo_name = functools.lru_cache(maxsize=REMEMBERED)(parse_repo_name)
_reference = functools.lru_cache(maxsize=REMEMBERED)(parse_reference)
_digest = functools.lru_cache(maxsize=REMEMBERED)(parse_digest)
_accept = functools.lru_cache(maxsize=REMEMBERED)(Accept.parse)


def _accepted(request: web.Request) -> Accept:
    headers = tuple(request.headers.getall("Accept", ()))
    if sum(map(len, headers)) > MAX_REMEMBERED_ACCEPT:
        return Accept.parse(headers)
    return _accept(headers)


def setup_routes(api: web.Application) -> None:
    """The routes of the registry API, relative to where it is mounted (``/v2``)."""
    api.router.add_route("*", "", base)
    api.router.add_route("*", "/", base)
    api.router.add_route("*", "/_catalog", catalog)
    api.router.add_route("*", "/{path:.+}", dispatch)


def _read_only(request: web.Request) -> None:
    if request.method not in READ_METHODS:
        raise RegistryError(
            405,
            "UNSUPPORTED",
            "this registry is a read-only pull-through mirror: push and delete are refused",
            headers={"Allow": "GET, HEAD"},
        )


async def base(request: web.Request) -> web.StreamResponse:
    request[KIND] = "base"
    policy = request.app[ACCESS_KEY]
    if policy.htpasswd is not None and request[USER] is None:
        # The ping tells clients to log in (they send credentials from then on);
        # clients without credentials go on anonymously.
        raise policy.challenge()
    _read_only(request)
    return web.json_response({})


async def dispatch(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    if len(path) > MAX_PATH:
        raise RegistryError(400, "NAME_INVALID", "request path too long")
    name, sep, ref = path.rpartition("/manifests/")
    if sep:
        request[KIND] = "manifest"
        _read_only(request)
        return await manifest(request, name, ref)
    if "/blobs/uploads" in path or path.endswith("/blobs/uploads"):
        request[KIND] = "blob"
        _read_only(request)  # every upload starts with a POST or PUT
        raise RegistryError(405, "UNSUPPORTED", "uploads are not supported")
    name, sep, ref = path.rpartition("/blobs/")
    if sep:
        request[KIND] = "blob"
        _read_only(request)
        return await blob(request, name, ref)
    if path.endswith("/tags/list"):
        request[KIND] = "tags"
        _read_only(request)
        return await tags(request, path.removesuffix("/tags/list"))
    raise RegistryError(404, "NOT_FOUND", "no such endpoint")


def _mirror(request: web.Request) -> Mirror:
    return request.app[MIRROR_KEY]


def _repo(request: web.Request, name: str) -> tuple[Route, Outcome]:
    """The route for a repository name, if this client may read it, and the request's
    outcome (``OUTCOME``) for the mirror to fill in."""
    repo_name: RepoName = _repo_name(name)
    route = _mirror(request).route(repo_name, request.query.get("ns"))
    request[OUTCOME] = outcome = Outcome(route.entry.name, route.repo)
    request.app[ACCESS_KEY].authorize(request, route.key)
    return route, outcome


# --- manifests -------------------------------------------------------------------


async def manifest(request: web.Request, name: str, ref: str) -> web.StreamResponse:
    mirror = _mirror(request)
    reference: Tag | Digest = _reference(ref)
    route, outcome = _repo(request, name)
    accept = _accepted(request)
    head = request.method == "HEAD"
    found = await mirror.manifest(route, reference, accept, need_body=not head, outcome=outcome)
    headers = _manifest_headers(found.digest, found.media_type, found.stale)
    if _etag_matches(request, found.digest):
        return web.Response(status=304, headers=headers)
    if head:
        return await _head(request, headers, found.size)
    assert found.body is not None
    return web.Response(body=found.body, headers=headers)


async def _head(
    request: web.Request, headers: Mapping[str, str], size: int | None
) -> web.StreamResponse:
    """A HEAD answer announcing the length of the body a GET would have."""
    response = web.StreamResponse(headers=headers)
    if size is not None:
        response.content_length = size
    await response.prepare(request)
    await response.write_eof()
    return response


@functools.lru_cache(maxsize=REMEMBERED)
def _manifest_headers(digest: Digest, media_type: str, stale: bool) -> Mapping[str, str]:
    """A manifest answer's headers (shared: responses copy them)."""
    headers = {
        "Content-Type": media_type,
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
    }
    if stale:
        headers["Warning"] = STALE_WARNING
    return headers


def _etag_matches(request: web.Request, digest: Digest) -> bool:
    value = request.headers.get("If-None-Match")
    if not value:
        return False
    return any(tag.strip().strip('"') in (str(digest), "*") for tag in value.split(","))


# --- blobs -----------------------------------------------------------------------


def _blob_headers(digest: Digest) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }


async def blob(request: web.Request, name: str, ref: str) -> web.StreamResponse:
    mirror = _mirror(request)
    digest: Digest = _digest(ref)
    route, outcome = _repo(request, name)
    headers = _blob_headers(digest)
    if request.method == "HEAD":
        return await _head(request, headers, await mirror.blob_size(route, digest, outcome))
    if _etag_matches(request, digest):
        return web.Response(status=304, headers=headers)
    with request.app[ACCESS_KEY].limiter.download(request[CLIENT]):
        return await send_blob(request, mirror, route, digest, headers, outcome=outcome)


# --- listings --------------------------------------------------------------------


def _page_args(request: web.Request, default: int | None) -> tuple[int | None, str | None]:
    raw_n = request.query.get("n")
    n: int | None = default
    if raw_n is not None and raw_n != "":
        if not (raw_n.isascii() and raw_n.isdigit()) or len(raw_n) > 9:
            raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "invalid number of results")
        n = min(int(raw_n), MAX_PAGE)
    last = request.query.get("last")
    return n, (last or None)


def _paginate(
    items: list[str], request: web.Request, default: int | None
) -> tuple[list[str], str | None]:
    n, last = _page_args(request, default)
    items = sorted(items)
    if last is not None:
        items = [item for item in items if item > last]
    if n is None or len(items) <= n:
        return items, None
    page = items[:n]
    if not page:
        return page, None
    query = f"last={quote(page[-1], safe='')}&n={n}"
    namespace = request.query.get("ns")
    if namespace:  # containerd's ?ns= names the registry: the next page needs it too
        query += f"&ns={quote(namespace, safe='')}"
    return page, f'<{request.path}?{query}>; rel="next"'


async def tags(request: web.Request, name: str) -> web.StreamResponse:
    mirror = _mirror(request)
    route, outcome = _repo(request, name)
    # A bad page size is refused before upstream is asked; a following page (``last``)
    # may come from the list read for the first one a moment ago.
    _, last = _page_args(request, None)
    listing = await mirror.tags(route, fresh=last is None, outcome=outcome)
    page, link = _paginate(listing.tags, request, None)
    response = web.Response(
        text=json.dumps({"name": name, "tags": page}), content_type="application/json"
    )
    if link:
        response.headers["Link"] = link
    if listing.stale:
        response.headers.add("Warning", STALE_WARNING)
    if listing.truncated:
        response.headers.add("Warning", TRUNCATED_WARNING)
    return response


async def catalog(request: web.Request) -> web.StreamResponse:
    request[KIND] = "catalog"
    _read_only(request)
    mirror = _mirror(request)
    policy = request.app[ACCESS_KEY]
    names = [name for name, key in await mirror.catalog_keys() if policy.may_read(request, key)]
    page, link = _paginate(names, request, CATALOG_DEFAULT_PAGE)
    response = web.Response(
        text=json.dumps({"repositories": page}), content_type="application/json"
    )
    if link:
        response.headers["Link"] = link
    return response
