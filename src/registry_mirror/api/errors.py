"""OCI error bodies, and the one place where internal errors become HTTP answers."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from registry_mirror.index import IndexFailure
from registry_mirror.mirror import (
    ManifestUnacceptable,
    RegistryNotMirrored,
    RepositoryDenied,
    TooManyFetches,
)
from registry_mirror.reference import InvalidReference
from registry_mirror.storage import StorageError
from registry_mirror.upstream import (
    UpstreamAuthFailed,
    UpstreamDigestMismatch,
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)

__all__ = [
    "API_VERSION_HEADERS",
    "KIND",
    "REQUEST_ID_HEADER",
    "REQUEST_ID_KEY",
    "Handler",
    "RegistryError",
    "add_api_version",
    "error_middleware",
    "error_response",
]

log = logging.getLogger(__name__)

# What a request asks for ("manifest", "blob", "tags"): which "not found" code it gets.
KIND: Final = web.RequestKey("kind", str)
REQUEST_ID_KEY: Final = web.RequestKey("request_id", str)  # set by the root middleware
REQUEST_ID_HEADER: Final = "X-Request-Id"

API_VERSION_HEADERS: Final = {
    "Docker-Distribution-API-Version": "registry/2.0",
    "X-Content-Type-Options": "nosniff",
}

# What a 404 from upstream means, by the kind of route that asked.
NOT_FOUND_CODES: Final = {
    "manifest": ("MANIFEST_UNKNOWN", "manifest unknown"),
    "blob": ("BLOB_UNKNOWN", "blob unknown to registry"),
    "tags": ("NAME_UNKNOWN", "repository name not known to registry"),
}


class RegistryError(Exception):
    """An answer decided in ``api/``: status, OCI code, message, optional headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: object = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}


def error_response(error: RegistryError, method: str = "GET") -> web.Response:
    body = json.dumps(
        {"errors": [{"code": error.code, "message": error.message, "detail": error.detail}]}
    )
    headers = {**API_VERSION_HEADERS, **error.headers}
    return web.Response(
        status=error.status,
        body=None if method == "HEAD" else body.encode(),
        content_type="application/json",
        headers=headers,
    )


OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE})
DESCRIPTORS_RETRY_AFTER: Final = 1


def _out_of_descriptors(exc: BaseException) -> bool:
    """The process or the system has no file descriptor left (anywhere in the chain)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in OUT_OF_DESCRIPTORS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def translate(exc: BaseException, kind: str) -> RegistryError:
    """Map any failure to the spec's error; the only such mapping in the program."""
    if _out_of_descriptors(exc):
        return RegistryError(
            503,
            "UNAVAILABLE",
            "server busy: out of file descriptors, try again shortly",
            headers={"Retry-After": str(DESCRIPTORS_RETRY_AFTER)},
        )
    match exc:
        case RegistryError():
            return exc
        case InvalidReference():
            return RegistryError(400, exc.code, exc.message)
        case RegistryNotMirrored():
            return RegistryError(404, "NAME_UNKNOWN", str(exc))
        case TooManyFetches():
            return RegistryError(
                429,
                "TOOMANYREQUESTS",
                "too many downloads in progress, try again shortly",
                headers={"Retry-After": str(exc.retry_after)},
            )
        case RepositoryDenied():
            return RegistryError(403, "DENIED", str(exc))
        case ManifestUnacceptable():
            return RegistryError(404, "MANIFEST_UNKNOWN", str(exc))
        case UpstreamNotFound():
            code, message = NOT_FOUND_CODES.get(kind, ("NAME_UNKNOWN", "not found"))
            return RegistryError(404, code, message)
        case UpstreamRateLimited():
            headers = {}
            if exc.retry_after is not None:
                headers["Retry-After"] = str(exc.retry_after)
            return RegistryError(
                429, "TOOMANYREQUESTS", "upstream registry rate limit reached", headers=headers
            )
        case UpstreamAuthFailed():
            # The mirror asks upstream with its own configured credentials, whoever the
            # client is: nothing the client could log in with changes the answer, so this
            # is a refusal (403, as registry:2 answers a denied pull), not a challenge.
            return RegistryError(403, "DENIED", f"upstream refused access: {exc.message}")
        case UpstreamUnavailable():
            return RegistryError(
                503,
                "UNAVAILABLE",
                "upstream registry unavailable and content not cached",
                detail=exc.message,
            )
        case UpstreamDigestMismatch() | UpstreamProtocolError():
            return RegistryError(
                502, "UNKNOWN", "invalid answer from upstream registry", detail=exc.message
            )
        case UpstreamError():
            return RegistryError(502, "UNKNOWN", "upstream registry error", detail=exc.message)
        case StorageError() | IndexFailure():
            log.error("storage failure: %s", exc)
            return RegistryError(503, "UNAVAILABLE", "cache storage unavailable")
        case web.HTTPMethodNotAllowed():
            return RegistryError(405, "UNSUPPORTED", "the operation is unsupported")
        case web.HTTPNotFound():
            return RegistryError(404, "NOT_FOUND", "no such endpoint")
        case web.HTTPException():
            return RegistryError(exc.status, "UNKNOWN", exc.reason)
    log.exception("internal error", exc_info=exc)
    return RegistryError(500, "UNKNOWN", "internal error")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except (ConnectionError, web.HTTPNotModified):
        raise
    except Exception as exc:
        error = translate(exc, request.get(KIND, ""))
        if request.writer.output_size > 0:
            # The headers (and maybe part of the body) are out: a second response would
            # land in the body. Cut the connection; the client sees an incomplete answer.
            log.warning(
                "%s %s failed after the response started, connection cut: %s: %s",
                request.method,
                request.path,
                type(exc).__name__,
                exc,
            )
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=error.status)  # never sent; for the access log
        if error.status >= 500:
            detail = "" if error.detail is None else f": {error.detail}"
            log.warning(
                "%s %s → %d %s%s", request.method, request.path, error.status, error.message, detail
            )
        return error_response(error, request.method)
    return response


async def add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer names the API version, as registry:2's do,
    and echoes containerd's namespace (``?ns=``) in ``OCI-Namespace``; the request id
    in ``X-Request-Id`` (a response sent before the root middleware sees it)."""
    response.headers.update(API_VERSION_HEADERS)
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    namespace = request.query.get("ns")
    if namespace and len(namespace) <= 255 and namespace.isprintable():
        response.headers["OCI-Namespace"] = namespace
