"""The registry API (the distribution API's read side) as an application of its own,
mounted at ``/v2`` by the composition root: its own middlewares (access control, then
OCI error bodies), its own response headers, its own state. Endpoints beside it
(metrics, health, a status page) live on the root application with their own error
handling and authorisation."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from registry_mirror.api.access import login_middleware
from registry_mirror.api.blob_transfer import WRITE_TIMEOUT_KEY
from registry_mirror.api.errors import (
    add_api_version,
    error_middleware,
    error_response,
    translate,
)
from registry_mirror.api.routes import setup_routes
from registry_mirror.config import Settings

__all__ = ["API_PREFIX", "MAX_REQUEST_BODY", "no_endpoint", "registry_api"]

API_PREFIX: Final = "/v2"
MAX_REQUEST_BODY: Final = 1024 * 1024  # the read side takes no bodies worth the name


def registry_api(settings: Settings) -> web.Application:
    """The registry API; the mirror itself (``MIRROR_KEY``) and the sendfile workers
    (``SENDFILE_KEY``) are given to it when the server starts. The access policy
    (``ACCESS_KEY``) is the root application's: its admission (allow list, request
    rate) applies to every path, the API adds who the client is logged in as."""
    api = web.Application(middlewares=[login_middleware, error_middleware])
    api[WRITE_TIMEOUT_KEY] = settings.http.write_timeout
    api.on_response_prepare.append(add_api_version)
    setup_routes(api)
    return api


async def no_endpoint(request: web.Request) -> web.StreamResponse:
    """On the root application, for any path beside the mounted applications: answered
    as the registry API answers one (an OCI error body), never with a bare HTML page."""
    return error_response(translate(web.HTTPNotFound(), ""), request.method)
