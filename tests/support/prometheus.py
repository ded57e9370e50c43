"""Reading the mirror's metrics, and a real Prometheus server (Debian's ``prometheus``) that
scrapes it.

:func:`scrape` GETs an exposition and parses it with the client library's own parser
(``prometheus_client.parser.text_string_to_metric_families``) into :class:`Samples`,
looked up by sample name and labels::

    samples = scrape(f"{mirror.url}/metrics")
    assert samples.value("registry_mirror_cache_requests_total", kind="blob", result="hit") == 3

:class:`PrometheusServer` runs ``prometheus`` on ``127.0.0.1:<free port>`` with its TSDB in
its work directory, a one-second scrape interval and the given targets; :meth:`query`
asks its HTTP API (``/api/v1/query``), :meth:`wait_for` until a query has the answer::

    with PrometheusServer(tmp_path / "prom", [Target(mirror.host)]) as prom:
        prom.wait_for('registry_mirror_cache_requests_total{result="hit",kind="blob"}', 3)
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .process import ServerError, ServerProcess, find_binary

__all__ = [
    "PROMETHEUS_BINARY",
    "PrometheusError",
    "PrometheusServer",
    "Samples",
    "Target",
    "prometheus_binary",
    "require_prometheus",
    "scrape",
]

PROMETHEUS_BINARY = "prometheus"


class PrometheusError(ServerError):
    """The Prometheus server failed to start, or a query failed."""


def prometheus_binary() -> str | None:
    return find_binary(PROMETHEUS_BINARY, "/usr/bin/prometheus")


def require_prometheus() -> str:
    """The binary's path; the test is *skipped* only when it is not installed (CI
    installs Debian's ``prometheus``: ``make deps``)."""
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("prometheus is not installed (make deps installs it)")
    return binary


Labels = frozenset[tuple[str, str]]


class Samples:
    """The samples of one exposition, by (sample name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.by_key: dict[tuple[str, Labels], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.by_key[sample.name, frozenset(sample.labels.items())] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, None if there is none."""
        return self.by_key.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; KeyError naming what there is."""
        found = self.get(name, **labels)
        if found is None:
            there = sorted(dict(k) for n, k in self.by_key if n == name)  # type: ignore[type-var]
            raise KeyError(f"no sample {name}{labels}; there are: {there}")
        return found

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, k), v in self.by_key.items() if n == name and wanted <= k)

    def names(self) -> set[str]:
        return {name for name, _ in self.by_key}

    def label_values(self, label: str) -> set[str]:
        """Every value ``label`` takes in the exposition."""
        return {value for _, labels in self.by_key for key, value in labels if key == label}


def scrape(url: str, **client: Any) -> Samples:
    """GET ``url`` (an exposition: status 200, Prometheus text format) and parse it."""
    with httpx.Client(trust_env=False, timeout=30, **client) as http:
        response = http.get(url)
    assert response.status_code == 200, (response.status_code, response.text[:500])
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return Samples(response.text)


@dataclass(frozen=True)
class Target:
    """A scrape target: ``host:port``, over HTTPS (certificate not verified) or not."""

    address: str
    path: str = "/metrics"
    https: bool = False
    job: str = "mirror"


class PrometheusServer(ServerProcess):
    """``prometheus`` scraping ``targets`` every second, its data in ``workdir``."""

    name = "prometheus"
    error = PrometheusError

    def __init__(self, workdir: Path, targets: Sequence[Target], *, binary: str | None = None):
        super().__init__(workdir)
        self.targets = list(targets)
        self.binary = binary or require_prometheus()

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        jobs: dict[str, list[Target]] = {}
        for target in self.targets:
            jobs.setdefault(f"{target.job}-{target.path}-{target.https}", []).append(target)
        scrape_configs: list[dict[str, Any]] = []
        for targets in jobs.values():
            first = targets[0]
            job: dict[str, Any] = {
                "job_name": f"{first.job}{len(scrape_configs)}",
                "metrics_path": first.path,
                "scheme": "https" if first.https else "http",
                "static_configs": [{"targets": [t.address for t in targets]}],
            }
            if first.https:
                job["tls_config"] = {"insecure_skip_verify": True}
            scrape_configs.append(job)
        return {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": scrape_configs,
        }

    def prepare(self) -> None:
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self.config()))

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def output(self) -> Path:
        return self.log_path

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/-/ready", timeout=2, trust_env=False).status_code == 200
        return False

    def start(self, timeout: float = 30.0) -> Self:
        return super().start(timeout)  # its data loaded first

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-5000:]
        return ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (``/api/v1/query``): ``[{"metric": {...}, "value":
        [time, "value"]}, ...]``."""
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": expr}, timeout=10, trust_env=False
        )
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {response.status_code} {body}")
        result = body["data"]["result"]
        assert isinstance(result, list)
        return result

    def wait_for(self, expr: str, expected: float, timeout: float = 30.0) -> Mapping[str, str]:
        """Wait until ``expr`` has exactly one series, of value ``expected``; its labels."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.query(expr)
            if len(last) == 1 and float(last[0]["value"][1]) == expected:
                labels = last[0]["metric"]
                assert isinstance(labels, dict)
                return labels
            time.sleep(0.25)
        targets = httpx.get(f"{self.url}/api/v1/targets", timeout=10, trust_env=False).json()
        raise AssertionError(
            f"{expr} never was {expected}: last {json.dumps(last)}\n"
            f"targets: {json.dumps(targets)[:2000]}\n{self.log()}"
        )
