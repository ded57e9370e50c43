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
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .ports import free_port
from .process import find_binary, listening
from .service import Service

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


class PrometheusError(RuntimeError):
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


class PrometheusServer(Service):
    """``prometheus`` scraping ``targets`` every second, its data in ``workdir``."""

    def __init__(self, workdir: Path, targets: Sequence[Target], *, binary: str | None = None):
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.binary = binary or require_prometheus()
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        jobs: dict[str, list[Target]] = {}
        for target in self.targets:
            jobs.setdefault(f"{target.job}-{target.path}-{target.https}", []).append(target)
        scrape_configs = []
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

    def start(self, timeout: float = 30.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env={k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                raise PrometheusError(f"prometheus exited with {code}:\n{self.log()}")
            if listening(self.port) and self._ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus was not ready within {timeout}s:\n{self.log()}")

    def _ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/-/ready", timeout=2, trust_env=False).status_code == 200
        return False

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

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

    def values(self, expr: str) -> dict[Labels, float]:
        """The query's series: labels (``__name__`` left out) → value."""
        return {
            frozenset((k, v) for k, v in row["metric"].items() if k != "__name__"): float(
                row["value"][1]
            )
            for row in self.query(expr)
        }

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

    def series(self) -> Iterator[str]:
        """Every metric name Prometheus has."""
        response = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=10)
        yield from response.json()["data"]
