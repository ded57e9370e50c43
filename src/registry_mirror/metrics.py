"""The mirror's Prometheus instruments: one :class:`Metrics` per application, made by the
composition root (``app.py``) on a registry of its own (never the library's global
default) and handed to the parts that count. Values that already live somewhere (the
breakers, the fills in progress, the storage figures) are read at scrape time by the
collectors of ``api/scrape.py``; what is counted here is counted once per request, per
upstream request or per fill, on label children bound in advance (a dictionary lookup,
no label parsing on the way).

Labels stay bounded: a registry's configured name, a kind, a method, a status class, a
route name, a reason. Never a repository, a digest or a path.
"""

from __future__ import annotations

import sys
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

from registry_mirror.outcome import CacheResult

__all__ = [
    "HTTP_BUCKETS",
    "KINDS",
    "NAMESPACE",
    "UPSTREAM_BUCKETS",
    "Metrics",
    "UpstreamMetrics",
    "status_class",
]

NAMESPACE: Final = "registry_mirror"
#: What a registry request was for (the access log's ``kind`` too).
KINDS: Final = ("manifest", "blob", "tags")
#: Client requests: from a manifest hit in memory (well under a millisecond) to a cold
#: layer of a few GiB.
HTTP_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
#: Upstream requests, to the response headers (a blob's body is not in it).
UPSTREAM_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_STATUS_CLASSES: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def status_class(status: int | None) -> str:
    """``2xx`` … ``5xx``; ``error`` for no answer at all (unreachable, timed out)."""
    if status is None:
        return "error"
    return _STATUS_CLASSES.get(status // 100, "error")


class UpstreamMetrics:
    """One upstream's instruments, bound to its name: its requests by method and status
    class with their latency, the body bytes received from it, the 429s it sent."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        self._metrics = metrics
        self._requests: dict[tuple[str, str], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self.received = {kind: metrics.upstream_bytes.labels(name, kind) for kind in KINDS}
        self.rate_limited = metrics.upstream_rate_limited.labels(name)
        for method in ("GET", "HEAD"):
            self._durations[method] = metrics.upstream_duration.labels(name, method)
            for cls in ("2xx", "3xx", "4xx", "5xx", "error"):
                self._requests[method, cls] = metrics.upstream_requests.labels(name, method, cls)

    def request(self, method: str, status: int | None, seconds: float) -> None:
        """One request answered with ``status`` (None: no answer) after ``seconds``."""
        cls = status_class(status)
        counter = self._requests.get((method, cls))
        if counter is None:
            counter = self._requests[method, cls] = self._metrics.upstream_requests.labels(
                self.name, method, cls
            )
        counter.inc()
        duration = self._durations.get(method)
        if duration is None:
            duration = self._durations[method] = self._metrics.upstream_duration.labels(
                self.name, method
            )
        duration.observe(seconds)


class Metrics:
    """Every instrument of one application, on its own :class:`CollectorRegistry`."""

    def __init__(self, version: str, registries: tuple[str, ...] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        ns = NAMESPACE
        self.cache_requests = Counter(
            "cache_requests",
            "Registry requests by upstream, kind and cache result",
            ["registry", "kind", "result"],
            namespace=ns,
            registry=reg,
        )
        self.served_bytes = Counter(
            "served_bytes",
            "Body bytes sent to clients by upstream, kind and cache result",
            ["registry", "kind", "result"],
            namespace=ns,
            registry=reg,
        )
        self.upstream_requests = Counter(
            "upstream_requests",
            "Requests sent to upstream registries by method and status class",
            ["registry", "method", "status"],
            namespace=ns,
            registry=reg,
        )
        self.upstream_duration = Histogram(
            "upstream_request_duration_seconds",
            "Time until an upstream registry's response headers",
            ["registry", "method"],
            namespace=ns,
            registry=reg,
            buckets=UPSTREAM_BUCKETS,
        )
        self.upstream_bytes = Counter(
            "upstream_received_bytes",
            "Body bytes received from upstream registries by kind",
            ["registry", "kind"],
            namespace=ns,
            registry=reg,
        )
        self.upstream_rate_limited = Counter(
            "upstream_rate_limited",
            "429 Too Many Requests answers received from upstream registries",
            ["registry"],
            namespace=ns,
            registry=reg,
        )
        self.fills = Counter(
            "fills",
            "Blob downloads from upstream ended, by result (cached, failed, uncached)",
            ["registry", "result"],
            namespace=ns,
            registry=reg,
        )
        self.evictions = Counter(
            "evictions",
            "Images evicted from the cache by reason",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.evicted_blobs = Counter(
            "evicted_blobs",
            "Blobs (manifests included) evicted from the cache by reason",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.evicted_bytes = Counter(
            "evicted_bytes",
            "Bytes on disk freed by eviction by reason",
            ["reason"],
            namespace=ns,
            registry=reg,
        )
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests answered by route and status class",
            ["route", "status"],
            namespace=ns,
            registry=reg,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request by route (a blob's whole body included)",
            ["route"],
            namespace=ns,
            registry=reg,
            buckets=HTTP_BUCKETS,
        )
        Info("build", "The running version", namespace=ns, registry=reg).info(
            {"version": version, "python": ".".join(map(str, sys.version_info[:3]))}
        )
        # Children bound in advance: (registry, kind, result) → (requests, bytes).
        self._cache: dict[tuple[str, str, str], tuple[Counter, Counter]] = {}
        self._http: dict[tuple[str, str], Counter] = {}
        self._http_durations: dict[str, Histogram] = {}
        self._fills: dict[tuple[str, str], Counter] = {}
        self._evictions: dict[str, tuple[Counter, Counter, Counter]] = {}
        self._upstreams: dict[str, UpstreamMetrics] = {}
        for reason in ("quota", "min_free", "max_idle"):
            self.evicted(reason, 0, 0, 0)
        for name in registries:
            self.upstream(name)
            for kind in KINDS:
                for result in CacheResult:
                    self._bind_cache(name, kind, result)
            for fill in ("cached", "failed", "uncached"):
                self._fills[name, fill] = self.fills.labels(name, fill)

    def upstream(self, name: str) -> UpstreamMetrics:
        """The instruments of the upstream named ``name`` (made once)."""
        found = self._upstreams.get(name)
        if found is None:
            found = self._upstreams[name] = UpstreamMetrics(self, name)
        return found

    def _bind_cache(self, registry: str, kind: str, result: str) -> tuple[Counter, Counter]:
        pair = (
            self.cache_requests.labels(registry, kind, result),
            self.served_bytes.labels(registry, kind, result),
        )
        self._cache[registry, kind, result] = pair
        return pair

    def cache_request(self, registry: str, kind: str, result: str, sent: int) -> None:
        """A registry request answered with ``result``, ``sent`` body bytes."""
        pair = self._cache.get((registry, kind, result))
        if pair is None:
            pair = self._bind_cache(registry, kind, result)
        pair[0].inc()
        if sent:
            pair[1].inc(sent)

    def http_request(self, route: str, status: int, seconds: float) -> None:
        cls = status_class(status)
        counter = self._http.get((route, cls))
        if counter is None:
            counter = self._http[route, cls] = self.http_requests.labels(route, cls)
        counter.inc()
        duration = self._http_durations.get(route)
        if duration is None:
            duration = self._http_durations[route] = self.http_duration.labels(route)
        duration.observe(seconds)

    def fill_done(self, registry: str, result: str) -> None:
        counter = self._fills.get((registry, result))
        if counter is None:
            counter = self._fills[registry, result] = self.fills.labels(registry, result)
        counter.inc()

    def evicted(self, reason: str, images: int, blobs: int, nbytes: int) -> None:
        """One eviction run's removals for one reason."""
        counters = self._evictions.get(reason)
        if counters is None:
            counters = self._evictions[reason] = (
                self.evictions.labels(reason),
                self.evicted_blobs.labels(reason),
                self.evicted_bytes.labels(reason),
            )
        counters[0].inc(images)
        counters[1].inc(blobs)
        counters[2].inc(nbytes)
