"""Each request observed once, by the root application's middleware: its request id
(made, or taken from a trusted proxy's ``X-Request-Id``), set for the logs of what runs
for it and sent back in ``X-Request-Id``; once answered, counted in the metrics (route
and status class, duration; for a registry request its cache result and the bytes
sent, from the mirror's :class:`~registry_mirror.outcome.Outcome`)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from registry_mirror.api.access_log import OUTCOME, REQUEST_ID_KEY, sent_bytes
from registry_mirror.api.clients import ClientAddresses
from registry_mirror.api.errors import KIND
from registry_mirror.logs import REQUEST_ID, RequestIds, accepted_request_id
from registry_mirror.metrics import Metrics

__all__ = ["OBSERVER_KEY", "REQUEST_ID_HEADER", "RequestObserver", "add_request_id"]

REQUEST_ID_HEADER: Final = "X-Request-Id"


class RequestObserver:
    """The request ids and the request metrics of one application."""

    def __init__(self, metrics: Metrics, clients: ClientAddresses) -> None:
        self.metrics = metrics
        self._clients = clients
        self._ids = RequestIds()

    def begin(self, request: web.Request) -> None:
        """The request's id, on the request and in the logging context."""
        request_id = None
        if self._clients.trusted and self._clients.from_trusted_proxy(request):
            request_id = accepted_request_id(request.headers.get(REQUEST_ID_HEADER))
        if request_id is None:
            request_id = self._ids.new()
        request[REQUEST_ID_KEY] = request_id
        REQUEST_ID.set(request_id)

    def end(self, request: web.Request, response: web.StreamResponse, seconds: float) -> None:
        """The request answered with ``response`` after ``seconds``: counted."""
        route = request.get(KIND) or "other"
        self.metrics.http_request(route, response.status, seconds)
        outcome = request.get(OUTCOME)
        if outcome is not None and outcome.result is not None:
            self.metrics.cache_request(
                outcome.registry, route, outcome.result, sent_bytes(request, response)
            )


OBSERVER_KEY: Final = web.AppKey("observer", RequestObserver)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` (root application): every answer names its request id."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
