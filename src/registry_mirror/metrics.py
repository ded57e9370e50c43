"""The mirror's Prometheus instruments: one :class:`Metrics` per application, made by the
composition root (``app.py``) on a :class:`~prometheus_client.CollectorRegistry` of its
own (never the library's global default) and handed to the parts that count. Values
that already live somewhere (the breakers, the fills in progress, the storage figures)
are read at scrape time by the collectors of ``api/scrape.py``.

What is counted here is counted once per request, per upstream request or per fill, on
label children bound in advance (a dictionary lookup at most). The children are plain
slotted objects incremented without a lock: every count is made on the event loop's
thread, and the families are built from them at scrape time, on that thread too. (The
client library's own instruments take a lock per increment and scan the buckets in
Python: several microseconds per request where a manifest hit costs about a hundred.)

Labels stay bounded: a registry's configured name, a kind, a method, a status class, a
route name, a reason. Never a repository, a digest or a path.
"""

from __future__ import annotations

import bisect
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from registry_mirror.outcome import CacheResult

__all__ = [
    "HTTP_BUCKETS",
    "KINDS",
    "NAMESPACE",
    "UPSTREAM_BUCKETS",
    "Count",
    "CounterFamily",
    "HistogramFamily",
    "Metrics",
    "Timing",
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


class Count:
    """One counter child: ``inc`` on the event loop."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Timing:
    """One histogram child: the count per bucket (not cumulative), the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class CounterFamily:
    """A counter with labels; its children made once (:meth:`child`) and kept."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = f"{NAMESPACE}_{name}"
        self.documentation = documentation
        self.labels = list(labels)
        self.children: dict[tuple[str, ...], Count] = {}

    def child(self, *values: str) -> Count:
        found = self.children.get(values)
        if found is None:
            found = self.children[values] = Count()
        return found

    def family(self) -> Metric:
        metric = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, count in list(self.children.items()):
            metric.add_metric(list(values), count.value)
        return metric


class HistogramFamily:
    """A histogram with labels and fixed buckets; children as for :class:`CounterFamily`."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[float]
    ) -> None:
        self.name = f"{NAMESPACE}_{name}"
        self.documentation = documentation
        self.labels = list(labels)
        self.bounds = tuple(bounds)
        self.children: dict[tuple[str, ...], Timing] = {}

    def child(self, *values: str) -> Timing:
        found = self.children.get(values)
        if found is None:
            found = self.children[values] = Timing(self.bounds)
        return found

    def family(self) -> Metric:
        metric = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        edges = [*(_bound(b) for b in self.bounds), "+Inf"]
        for values, timing in list(self.children.items()):
            cumulative, buckets = 0, []
            for edge, count in zip(edges, timing.counts, strict=True):
                cumulative += count
                buckets.append((edge, float(cumulative)))
            metric.add_metric(list(values), buckets, timing.sum)
        return metric


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


class UpstreamMetrics:
    """One upstream's instruments, bound to its name: its requests by method and status
    class with their latency, the body bytes received from it, the 429s it sent."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        self._requests = metrics.upstream_requests
        self._durations = metrics.upstream_duration
        self.received = {kind: metrics.upstream_bytes.child(name, kind) for kind in KINDS}
        self.rate_limited = metrics.upstream_rate_limited.child(name)
        for method in ("GET", "HEAD"):  # shown at 0 from the start
            self._durations.child(name, method)
            for cls in ("2xx", "3xx", "4xx", "5xx", "error"):
                self._requests.child(name, method, cls)

    def request(self, method: str, status: int | None, seconds: float) -> None:
        """One request answered with ``status`` (None: no answer) after ``seconds``."""
        self._requests.child(self.name, method, status_class(status)).inc()
        self._durations.child(self.name, method).observe(seconds)


class Metrics:
    """Every instrument of one application, on its own :class:`CollectorRegistry`
    (``registry``), where the collectors read at scrape time are registered too."""

    def __init__(self, version: str, registries: tuple[str, ...] = ()) -> None:
        self.version = version
        self.cache_requests = CounterFamily(
            "cache_requests",
            "Registry requests by upstream, kind and cache result",
            ["registry", "kind", "result"],
        )
        self.served_bytes = CounterFamily(
            "served_bytes",
            "Body bytes sent to clients by upstream, kind and cache result",
            ["registry", "kind", "result"],
        )
        self.upstream_requests = CounterFamily(
            "upstream_requests",
            "Requests sent to upstream registries by method and status class",
            ["registry", "method", "status"],
        )
        self.upstream_duration = HistogramFamily(
            "upstream_request_duration_seconds",
            "Time until an upstream registry's response headers",
            ["registry", "method"],
            UPSTREAM_BUCKETS,
        )
        self.upstream_bytes = CounterFamily(
            "upstream_received_bytes",
            "Body bytes received from upstream registries by kind",
            ["registry", "kind"],
        )
        self.upstream_rate_limited = CounterFamily(
            "upstream_rate_limited",
            "429 Too Many Requests answers received from upstream registries",
            ["registry"],
        )
        self.fills = CounterFamily(
            "fills",
            "Blob downloads from upstream ended, by result (cached, failed, uncached)",
            ["registry", "result"],
        )
        self.evictions = CounterFamily(
            "evictions", "Images evicted from the cache by reason", ["reason"]
        )
        self.evicted_blobs = CounterFamily(
            "evicted_blobs",
            "Blobs (manifests included) evicted from the cache by reason",
            ["reason"],
        )
        self.evicted_bytes = CounterFamily(
            "evicted_bytes", "Bytes on disk freed by eviction by reason", ["reason"]
        )
        self.http_requests = CounterFamily(
            "http_requests", "HTTP requests answered by route and status class", ["route", "status"]
        )
        self.http_duration = HistogramFamily(
            "http_request_duration_seconds",
            "Time to answer an HTTP request by route (a blob's whole body included)",
            ["route"],
            HTTP_BUCKETS,
        )
        self._families = (
            self.cache_requests,
            self.served_bytes,
            self.upstream_requests,
            self.upstream_duration,
            self.upstream_bytes,
            self.upstream_rate_limited,
            self.fills,
            self.evictions,
            self.evicted_blobs,
            self.evicted_bytes,
            self.http_requests,
            self.http_duration,
        )
        # Children bound in advance: (registry, kind, result) → (requests, bytes).
        self._cache: dict[tuple[str, str, str], tuple[Count, Count]] = {}
        self._http: dict[tuple[str, str], Count] = {}
        self._http_durations: dict[str, Timing] = {}
        self._upstreams: dict[str, UpstreamMetrics] = {}
        for reason in ("quota", "min_free", "max_idle"):
            self.evicted(reason, 0, 0, 0)
        for name in registries:
            self.upstream(name)
            for kind in KINDS:
                for result in CacheResult:
                    self._bind_cache(name, kind, result)
            for fill in ("cached", "failed", "uncached"):
                self.fills.child(name, fill)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """The families, from the children's values now (on the event loop)."""
        build = InfoMetricFamily(f"{NAMESPACE}_build", "The running version")
        python = ".".join(map(str, sys.version_info[:3]))
        build.add_metric([], {"version": self.version, "python": python})
        yield build
        for family in self._families:
            yield family.family()

    def upstream(self, name: str) -> UpstreamMetrics:
        """The instruments of the upstream named ``name`` (made once)."""
        found = self._upstreams.get(name)
        if found is None:
            found = self._upstreams[name] = UpstreamMetrics(self, name)
        return found

    def _bind_cache(self, registry: str, kind: str, result: str) -> tuple[Count, Count]:
        pair = (
            self.cache_requests.child(registry, kind, result),
            self.served_bytes.child(registry, kind, result),
        )
        self._cache[registry, kind, result] = pair
        return pair

    def cache_request(self, registry: str, kind: str, result: str, sent: int) -> None:
        """A registry request answered with ``result``, ``sent`` body bytes."""
        pair = self._cache.get((registry, kind, result))
        if pair is None:
            pair = self._bind_cache(registry, kind, result)
        pair[0].value += 1
        pair[1].value += sent

    def http_request(self, route: str, status: int, seconds: float) -> None:
        cls = _STATUS_CLASSES.get(status // 100, "error")
        counter = self._http.get((route, cls))
        if counter is None:
            counter = self._http[route, cls] = self.http_requests.child(route, cls)
        counter.value += 1
        duration = self._http_durations.get(route)
        if duration is None:
            duration = self._http_durations[route] = self.http_duration.child(route)
        duration.observe(seconds)

    def fill_done(self, registry: str, result: str) -> None:
        self.fills.child(registry, result).inc()

    def evicted(self, reason: str, images: int, blobs: int, nbytes: int) -> None:
        """One eviction run's removals for one reason."""
        self.evictions.child(reason).inc(images)
        self.evicted_blobs.child(reason).inc(blobs)
        self.evicted_bytes.child(reason).inc(nbytes)
