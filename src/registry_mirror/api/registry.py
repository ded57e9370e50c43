"""The registry API (the distribution API's read side) as an application of its own,
mounted at ``/v2`` by the composition root: its own middlewares (access control, then
OCI error bodies), its own response headers, its own state. Endpoints beside it
(metrics, health, a status page) live on the root application with their own error
handling and authorisation."""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web

from registry_mirror.api.access import ACCESS_KEY, AccessPolicy, login_refusal, refusal
from registry_mirror.api.blob_transfer import WRITE_TIMEOUT_KEY
from registry_mirror.api.errors import (
    Handler,
    add_api_version,
    error_middleware,
    error_response,
    translate,
)
from registry_mirror.api.observe import OBSERVER_KEY
from registry_mirror.api.routes import setup_routes
from registry_mirror.config import Settings
from registry_mirror.health import is_probe

__all__ = [
    "API_PREFIX",
    "MAX_REQUEST_BODY",
    "api_middleware",
    "no_endpoint_middleware",
    "registry_api",
    "root_middleware",
]

API_PREFIX: Final = "/v2"
MAX_REQUEST_BODY: Final = 1024 * 1024  # the read side takes no bodies worth the name


def registry_api(settings: Settings, policy: AccessPolicy) -> web.Application:
    """The registry API; the mirror itself (``MIRROR_KEY``) and the sendfile workers
    (``SENDFILE_KEY``) are given to it when the server starts. The access policy
    (``ACCESS_KEY``) is the root application's: its admission (allow list, request
    rate) applies to every path, the API adds who the client is logged in as. The API
    holds it too, so that its requests find it in their own application."""
    api = web.Application(middlewares=[api_middleware])
    api[ACCESS_KEY] = policy
    api[WRITE_TIMEOUT_KEY] = settings.http.write_timeout
    api.on_response_prepare.append(add_api_version)
    setup_routes(api)
    return api


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The registry API's middleware: who the client is logged in as (``login_refusal``),
    then OCI error bodies for what fails (``error_middleware``). One middleware, not two:
    every request pays for each layer."""
    refused = await login_refusal(request)
    if refused is not None:
        return refused
    return await error_middleware(request, handler)


@web.middleware
async def root_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The root application's middleware: the request's id, admission for every path
    (``access.refusal``: allow list, request rate — the health probes are not
    counted: a probe refused restarts a pod), then :func:`no_endpoint_middleware`;
    the answer counted in the metrics (``observe``)."""
    observer = request.app[OBSERVER_KEY]
    observer.begin(request)
    started = time.perf_counter()
    response: web.StreamResponse | None = refusal(request, counted=not is_probe(request))
    if response is None:
        try:
            response = await no_endpoint_middleware(request, handler)
        except web.HTTPException as exc:
            observer.end(request, exc, time.perf_counter() - started)
            raise
    observer.end(request, response, time.perf_counter() - started)
    return response


@web.middleware
async def no_endpoint_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the root application: a request no route takes (any path beside the mounted
    applications; a ``CONNECT``, whose target is no path at all) is answered as the
    registry API answers one (an OCI error body), never with a bare text page. Requests
    that have a route pass straight on."""
    failure = request.match_info.http_exception
    if failure is not None:
        return error_response(translate(failure, ""), request.method)
    return await handler(request)
