"""``/metrics``: the Prometheus text (or OpenMetrics, when asked for) of one application's
registry, on the main port (the root application: its admission applies, no login) and
on the debug listener (``http.debug``).

Values that live elsewhere are read at scrape time, never walked or waited for: the
upstreams' circuit breakers and announced rate limits, the fills in progress and their
clients, the storage figures the evictor keeps (bytes used, blobs) and the limits. The
only I/O is the free space of the store's filesystem (``statvfs``, on the store's own
threads) and the process's figures from ``/proc`` (in a worker thread), both before the
text is made.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Final, Protocol

from aiohttp import web
from prometheus_client import Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from registry_mirror.api.errors import KIND
from registry_mirror.metrics import NAMESPACE, Metrics
from registry_mirror.mirror import Mirror
from registry_mirror.storage import Capacity
from registry_mirror.upstream import RegistryClient

__all__ = [
    "SCRAPE_KEY",
    "LiveCollector",
    "MirrorCollector",
    "Scrape",
    "ThreadedCollector",
    "debug_app",
    "metrics_handler",
]

log = logging.getLogger(__name__)

REFRESH_TIMEOUT: Final = 5.0  # a scrape never waits longer than this for a figure


class LiveCollector(Protocol):
    """A collector whose figures are gathered (awaited) before each scrape."""

    async def refresh(self) -> None: ...

    def collect(self) -> Iterable[Metric]: ...


class ThreadedCollector:
    """A collector that reads files (``/proc``), run in a worker thread before each
    scrape; the scrape then yields what it found."""

    def __init__(self, inner: Collector) -> None:
        self._inner = inner
        self._found: list[Metric] = []

    async def refresh(self) -> None:
        self._found = await asyncio.to_thread(lambda: list(self._inner.collect()))

    def collect(self) -> Iterable[Metric]:
        return list(self._found)


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, labels=list(labels))


def _value(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """A gauge without labels, of one value."""
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, value=value)


class MirrorCollector:
    """The running mirror's figures, read at scrape time."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self._free: int | None = None

    async def refresh(self) -> None:
        store = self.mirror.store
        if not isinstance(store, Capacity):
            return
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT):
                self._free = await store.free_space()
        except (TimeoutError, OSError) as exc:
            log.warning("metrics: free space of the cache unknown: %s", exc)
            self._free = None

    def collect(self) -> Iterator[Metric]:
        yield from self._upstreams()
        yield from self._fills()
        yield from self._storage()

    def _upstreams(self) -> Iterator[Metric]:
        up = _gauge(
            "upstream_up", "1 when the upstream is asked, 0 while marked down", ["registry"]
        )
        success = _gauge(
            "upstream_last_success_timestamp_seconds",
            "When the upstream last answered a metadata request",
            ["registry"],
        )
        failure = _gauge(
            "upstream_last_failure_timestamp_seconds",
            "When a metadata request to the upstream last failed",
            ["registry"],
        )
        failures = _gauge(
            "upstream_consecutive_failures",
            "Metadata requests failed in a row (the circuit breaker's count)",
            ["registry"],
        )
        limit = _gauge(
            "upstream_ratelimit_limit",
            "Requests allowed per window, as the upstream last announced (ratelimit-limit)",
            ["registry"],
        )
        remaining = _gauge(
            "upstream_ratelimit_remaining",
            "Requests left in the window, as the upstream last announced (ratelimit-remaining)",
            ["registry"],
        )
        window = _gauge(
            "upstream_ratelimit_window_seconds",
            "The rate limit's window (the w= of the ratelimit headers)",
            ["registry"],
        )
        for entry in self.mirror.router.entries:
            client = entry.upstream
            if not isinstance(client, RegistryClient):
                continue
            name = [entry.name]
            breaker = client.breaker
            up.add_metric(name, 0.0 if breaker.is_open else 1.0)
            failures.add_metric(name, breaker.failures)
            if breaker.last_success is not None:
                success.add_metric(name, breaker.last_success)
            if breaker.last_failure is not None:
                failure.add_metric(name, breaker.last_failure)
            announced = client.ratelimit
            if announced is not None:
                remaining.add_metric(name, announced.remaining)
                if announced.limit is not None:
                    limit.add_metric(name, announced.limit)
                if announced.window is not None:
                    window.add_metric(name, announced.window)
        yield from (up, success, failure, failures, limit, remaining, window)

    def _fills(self) -> Iterator[Metric]:
        blobs = self.mirror.blobs
        fills = blobs.fills()
        downloads: Counter[str] = Counter()
        clients: Counter[str] = Counter()
        for fill in fills:
            downloads[fill.route.entry.name] += 1
            clients[fill.route.entry.name] += fill.clients
        in_progress = _gauge(
            "fills_in_progress", "Blob downloads from upstream in progress", ["registry"]
        )
        waiting = _gauge(
            "fill_clients",
            "Responses taking their bytes from a download in progress",
            ["registry"],
        )
        for entry in self.mirror.router.entries:
            in_progress.add_metric([entry.name], downloads[entry.name])
            waiting.add_metric([entry.name], clients[entry.name])
        queued = _value(
            "fill_queue",
            "Requests waiting for a download slot (limits.upstream_fetches)",
            blobs.queued,
        )
        yield from (in_progress, waiting, queued)

    def _storage(self) -> Iterator[Metric]:
        """The figures known (None: not measured yet, or the limit not set)."""
        evictor = self.mirror.evictor
        limits = evictor.limits
        measured = evictor.measured.is_set()
        figures = (
            (
                "storage_used_bytes",
                "Bytes on disk the cached blobs take",
                evictor.used if measured else None,
            ),
            (
                "storage_blobs",
                "Blobs (manifests included) in the cache",
                evictor.blobs if measured else None,
            ),
            ("storage_quota_bytes", "storage.quota: the cache's size limit", limits.quota),
            ("storage_min_free_bytes", "storage.min_free: free space kept", limits.min_free),
            ("storage_max_idle_seconds", "storage.max_idle: unused content goes", limits.max_idle),
            ("storage_free_bytes", "Bytes free on the cache's filesystem", self._free),
        )
        for name, documentation, value in figures:
            if value is not None:
                yield _value(name, documentation, value)


class Scrape:
    """One application's ``/metrics``: its :class:`Metrics`, and the collectors refreshed
    before each scrape (the process's figures from the start; the mirror's while it runs)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._live: list[LiveCollector] = []
        registry = metrics.registry
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.attach(ThreadedCollector(ProcessCollector(registry=None)))

    def attach(self, collector: LiveCollector) -> None:
        self.metrics.registry.register(collector)
        self._live.append(collector)

    def detach(self, collector: LiveCollector) -> None:
        self.metrics.registry.unregister(collector)
        self._live.remove(collector)

    async def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition (its content type) ``accept`` asks for."""
        for collector in list(self._live):
            await collector.refresh()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.metrics.registry), content_type


SCRAPE_KEY: Final = web.AppKey("scrape", Scrape)


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    """``GET /metrics``: the exposition; a failure is a plain 500, logged."""
    request[KIND] = "metrics"
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="GET or HEAD\n", headers={"Allow": "GET, HEAD"})
    accept = ",".join(request.headers.getall("Accept", ()))
    try:
        body, content_type = await request.app[SCRAPE_KEY].render(accept)
    except Exception:
        log.exception("metrics: the exposition failed")
        return web.Response(status=500, text="metrics unavailable\n")
    return web.Response(body=body, headers={"Content-Type": content_type})


def debug_app(scrape: Scrape, path: str) -> web.Application:
    """registry:2's debug listener: the metrics at ``path`` (``http.debug.prometheus``),
    plain HTTP, no admission (bind it to an address only the monitoring reaches)."""
    app = web.Application()
    app[SCRAPE_KEY] = scrape
    app.router.add_route("*", path, metrics_handler)
    return app
