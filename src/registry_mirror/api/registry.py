"""The registry API (the distribution API's read side) as an application of its own,
mounted at ``/v2`` by the composition root: its own middlewares (access control, then
OCI error bodies), its own response headers, its own state. Endpoints beside it
(metrics, health, a status page) live on the root application with their own error
handling and authorisation."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from registry_mirror.api.access import ACCESS_KEY, AccessPolicy, access_middleware
from registry_mirror.api.blob_transfer import WRITE_TIMEOUT_KEY
from registry_mirror.api.errors import (
    Handler,
    add_api_version,
    error_middleware,
    error_response,
    translate,
)
from registry_mirror.api.routes import setup_routes
from registry_mirror.config import Settings

__all__ = ["API_PREFIX", "MAX_REQUEST_BODY", "outside_api_middleware", "registry_api"]

API_PREFIX: Final = "/v2"
MAX_REQUEST_BODY: Final = 1024 * 1024  # the read side takes no bodies worth the name


def registry_api(settings: Settings) -> web.Application:
    """The registry API; the mirror itself (``MIRROR_KEY``) and the sendfile workers
    (``SENDFILE_KEY``) are given to it when the server starts."""
    api = web.Application(
        middlewares=[access_middleware, error_middleware], client_max_size=MAX_REQUEST_BODY
    )
    policy = AccessPolicy(settings)
    api[ACCESS_KEY] = policy
    api[WRITE_TIMEOUT_KEY] = settings.http.write_timeout
    api.on_cleanup.append(policy.close)
    api.on_response_prepare.append(add_api_version)
    setup_routes(api)
    return api


@web.middleware
async def outside_api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the root application: a path that is no endpoint at all is answered as the
    registry API answers one (an OCI error body), never with a bare HTML page."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        response = error_response(translate(exc, ""), request.method)
        await add_api_version(request, response)
        return response
