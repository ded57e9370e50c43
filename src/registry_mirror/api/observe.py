"""Each request observed once, by the root application's middleware: its request id
(made, or taken from a trusted proxy's ``X-Request-Id``), set for the logs of what runs
for it and sent back in ``X-Request-Id``; once answered, counted in the metrics (route
and status class, duration; for a registry request its cache result and the bytes
sent, from the mirror's :class:`~registry_mirror.outcome.Outcome`)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from registry_mirror.api.access_log import BODY_BYTES, OUTCOME, sent_bytes
from registry_mirror.api.clients import ClientAddresses
from registry_mirror.api.errors import KIND, REQUEST_ID_HEADER, REQUEST_ID_KEY
from registry_mirror.logs import REQUEST_ID, RequestIds, accepted_request_id
from registry_mirror.metrics import Metrics

__all__ = ["OBSERVER_KEY", "RequestObserver"]


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
        """The request answered with ``response`` after ``seconds``: counted, and its id
        in ``X-Request-Id`` if the answer is not sent yet (the registry API's answers
        sent by their handler carry it already: ``errors.add_api_version``)."""
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID_KEY]
        route = request.get(KIND) or "other"
        self.metrics.http_request(route, response.status, seconds)
        outcome = request.get(OUTCOME)
        if outcome is not None and outcome.result is not None:
            sent = sent_bytes(request, response)
            request[BODY_BYTES] = sent  # the access log's figure too, found at once
            self.metrics.cache_request(outcome.registry, route, outcome.result, sent)


OBSERVER_KEY: Final = web.AppKey("observer", RequestObserver)

