"""The admin endpoints: the admin actions (:mod:`registry_mirror.maintenance.admin`) over
HTTP, an application of their own mounted at ``/admin`` on the root application when
``auth.admins`` names someone (else they do not exist: an OCI 404 like any unknown path).

- ``GET /admin/images?image=REF``: is it cached (platforms, blobs, last use).
- ``POST /admin/images/refresh`` ``{"image": REF}``: revalidate the tag with upstream now.
- ``POST /admin/images/forget`` ``{"image": REF, "tag_only": false}`` (or ``DELETE
  /admin/images?image=REF[&tag_only=true]``): forget a tag or an image.

Only users of the htpasswd file that ``auth.admins`` names (Basic authentication, the
registry's credentials, failed logins counted against the same limit): anonymous 401
with a challenge, another user 403. Mutations only by POST or DELETE, a POST only with
a JSON body (a cross-site form cannot send one), so no link or form changes anything.
JSON in and out; errors as ``{"error": {"code", "message"}}``, translated here only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from registry_mirror.api.access import ACCESS_KEY, CLIENT, AccessPolicy
from registry_mirror.api.errors import RegistryError
from registry_mirror.index import IndexFailure
from registry_mirror.maintenance.admin import AdminActions, BadImage, NeedsTag, NotCached
from registry_mirror.mirror import RegistryNotMirrored, RepositoryDenied
from registry_mirror.rootlock import RootLocked
from registry_mirror.storage import StorageError
from registry_mirror.upstream import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = ["ADMIN_KEY", "ADMIN_PREFIX", "MAX_ADMIN_BODY", "AdminRefusal", "admin_api"]

log = logging.getLogger(__name__)

ADMIN_PREFIX: Final = "/admin"
MAX_ADMIN_BODY: Final = 16 * 1024
ADMIN_KEY: Final = web.AppKey("admin actions", AdminActions)
ADMINS_KEY: Final = web.AppKey("admins", frozenset)
WHO: Final = web.RequestKey("admin", str)  # the admin and the address asking

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON_HEADERS: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class AdminRefusal(Exception):
    """An admin request refused before any action: status, code, message, headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def admin_api(admins: list[str], policy: AccessPolicy) -> web.Application | None:
    """The admin application, or None when nobody is an admin. The actions
    (``ADMIN_KEY``) are given to it when the server starts."""
    if not admins:
        return None
    app = web.Application(middlewares=[admin_middleware])
    app[ACCESS_KEY] = policy
    app[ADMINS_KEY] = frozenset(admins)
    app.router.add_route("*", "/images", images)
    app.router.add_route("*", "/images/refresh", refresh)
    app.router.add_route("*", "/images/forget", forget)
    app.router.add_route("*", "/{tail:.*}", no_endpoint)
    return app


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who asks (an admin, or the answer why not), then the action; every failure
    becomes a JSON error here, none a traceback."""
    try:
        request[WHO] = f"{await _admin(request)} from {request[CLIENT]}"
        return await handler(request)
    except Exception as exc:
        return _error(_translate(exc, request))


async def _admin(request: web.Request) -> str:
    policy = request.app[ACCESS_KEY]
    if policy.htpasswd is None:  # settings refuse admins without it; never open
        raise AdminRefusal(404, "NOT_FOUND", "no such endpoint")
    try:
        user = await policy.user(request)  # failed logins counted and limited there
    except RegistryError as exc:
        raise AdminRefusal(exc.status, exc.code, exc.message, exc.headers) from None
    if user is None:
        challenge = policy.challenge()
        raise AdminRefusal(401, "UNAUTHORIZED", "log in as an admin", challenge.headers)
    if user not in request.app[ADMINS_KEY]:
        log.info(
            "admin %s %s refused: %s is not an admin", request.method, request.path[:200], user
        )
        raise AdminRefusal(403, "DENIED", f"user {user!r} is not an admin")
    return user


def _only(request: web.Request, *methods: str) -> None:
    if request.method not in methods:
        raise AdminRefusal(
            405,
            "METHOD_NOT_ALLOWED",
            f"{request.method[:20]} is not allowed here: {', '.join(methods)}",
            {"Allow": ", ".join(methods)},
        )


async def _body(request: web.Request, allowed: frozenset[str]) -> dict[str, object]:
    """The JSON object of a POST, bounded, with no key but ``allowed``."""
    if request.content_type != "application/json":
        raise AdminRefusal(415, "UNSUPPORTED_MEDIA_TYPE", "send a JSON body (application/json)")
    if request.content_length is not None and request.content_length > MAX_ADMIN_BODY:
        raise AdminRefusal(413, "TOO_LARGE", f"body over {MAX_ADMIN_BODY} bytes")
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > MAX_ADMIN_BODY:
            raise AdminRefusal(413, "TOO_LARGE", f"body over {MAX_ADMIN_BODY} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise AdminRefusal(400, "BAD_REQUEST", "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise AdminRefusal(400, "BAD_REQUEST", "the body is not a JSON object")
    unknown = sorted(str(key)[:40] for key in doc if key not in allowed)
    if unknown:
        raise AdminRefusal(400, "BAD_REQUEST", f"unknown fields: {', '.join(unknown[:5])}")
    return doc


def _image(value: object) -> str:
    if not isinstance(value, str):
        raise AdminRefusal(
            400, "BAD_REQUEST", 'say which image: "image": "[registry/]repository[:tag|@digest]"'
        )
    return value


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "1"):
        return True
    if value in (None, "false", "0"):
        return False
    raise AdminRefusal(400, "BAD_REQUEST", f"{name}: true or false")


def _json(result: object) -> web.Response:
    assert dataclasses.is_dataclass(result) and not isinstance(result, type)
    return web.json_response(dataclasses.asdict(result), headers=JSON_HEADERS)


async def images(request: web.Request) -> web.StreamResponse:
    _only(request, "GET", "DELETE")
    actions = request.app[ADMIN_KEY]
    image = _image(request.query.get("image"))
    if request.method == "DELETE":
        tag_only = _flag(request.query.get("tag_only"), "tag_only")
        return _json(await actions.forget(image, who=request[WHO], tag_only=tag_only))
    return _json(await actions.inspect(image, who=request[WHO]))


async def refresh(request: web.Request) -> web.StreamResponse:
    _only(request, "POST")
    body = await _body(request, frozenset({"image"}))
    result = await request.app[ADMIN_KEY].refresh(_image(body.get("image")), who=request[WHO])
    return _json(result)


async def forget(request: web.Request) -> web.StreamResponse:
    _only(request, "POST")
    body = await _body(request, frozenset({"image", "tag_only"}))
    image, tag_only = _image(body.get("image")), _flag(body.get("tag_only"), "tag_only")
    return _json(await request.app[ADMIN_KEY].forget(image, who=request[WHO], tag_only=tag_only))


async def no_endpoint(request: web.Request) -> web.StreamResponse:
    raise AdminRefusal(404, "NOT_FOUND", "no such admin endpoint")


def _translate(exc: Exception, request: web.Request) -> AdminRefusal:
    """Every failure of an admin request as its answer: the one such mapping."""
    match exc:
        case AdminRefusal():
            return exc
        case BadImage():
            return AdminRefusal(400, "BAD_IMAGE", str(exc))
        case NeedsTag():
            return AdminRefusal(400, "NEEDS_TAG", str(exc))
        case NotCached():
            return AdminRefusal(404, "NOT_CACHED", str(exc))
        case RegistryNotMirrored():
            return AdminRefusal(404, "NOT_MIRRORED", str(exc))
        case RepositoryDenied():
            return AdminRefusal(403, "DENIED", str(exc))
        case UpstreamNotFound():
            return AdminRefusal(
                404, "UPSTREAM_NOT_FOUND", f"upstream: {exc.message}; nothing changed"
            )
        case UpstreamRateLimited():
            headers = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
            return AdminRefusal(
                503, "UPSTREAM_RATE_LIMITED", f"upstream: {exc.message}; nothing changed", headers
            )
        case UpstreamUnavailable():
            return AdminRefusal(
                503, "UPSTREAM_UNAVAILABLE", f"upstream: {exc.message}; nothing changed"
            )
        case UpstreamAuthFailed():
            return AdminRefusal(502, "UPSTREAM_DENIED", f"upstream: {exc.message}; nothing changed")
        case UpstreamError():
            return AdminRefusal(502, "UPSTREAM_ERROR", f"upstream: {exc.message}")
        case RootLocked():
            return AdminRefusal(409, "BUSY", str(exc))
        case StorageError() | IndexFailure():
            log.error("admin %s %s: storage failure: %s", request.method, request.path[:200], exc)
            return AdminRefusal(503, "STORAGE_UNAVAILABLE", "cache storage unavailable")
        case web.HTTPException():
            return AdminRefusal(exc.status, "BAD_REQUEST", exc.reason)
    log.exception("admin %s %s: internal error", request.method, request.path[:200], exc_info=exc)
    return AdminRefusal(500, "INTERNAL", "internal error")


def _error(refusal: AdminRefusal) -> web.Response:
    return web.json_response(
        {"error": {"code": refusal.code, "message": refusal.message}},
        status=refusal.status,
        headers={**JSON_HEADERS, **refusal.headers},
    )
