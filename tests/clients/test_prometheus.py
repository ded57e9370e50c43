"""A real Prometheus server (Debian's ``prometheus``) scraping the mirror on loopback: over
the mirror's own TLS on the main port, and on the debug listener (``http.debug``), after
skopeo pulled an image through it. The series are read back from Prometheus's HTTP API.
Skipped only where the binary is not installed (CI installs it)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import MirrorFactory
from tests.support.clients import require_tools
from tests.support.images import push_image
from tests.support.ports import free_port
from tests.support.prometheus import PrometheusServer, Target, require_prometheus, scrape
from tests.support.registry import RegistryProcess
from tests.support.skopeo import skopeo_copy
from tests.support.tls import tls_args


def test_prometheus_scrapes_the_pull_from_both_listeners(
    upstream: RegistryProcess, mirror_factory: MirrorFactory, tmp_path: Path
) -> None:
    binary = require_prometheus()
    require_tools("skopeo")
    image = push_image(upstream.url, "library/alpine", "3.20", layers=[200_000, 30_000])
    debug = free_port()
    mirror = mirror_factory(
        upstream.url,
        args=[
            *tls_args(tmp_path / "tls"),
            "--http-debug-addr",
            f"127.0.0.1:{debug}",
            "--http-debug-prometheus-enabled",
            "true",
        ],
    )
    pulled = skopeo_copy(mirror.host, image.reference, tmp_path / "oci")
    assert pulled.returncode == 0, pulled.stderr
    blob_bytes = sum(len(data) for data in image.blobs.values())
    # What the mirror says itself, parsed (the figures Prometheus must hold too).
    own = scrape(f"http://127.0.0.1:{debug}/metrics")
    blobs = own.value(
        "registry_mirror_cache_requests_total", registry="docker.io", kind="blob", result="miss"
    )
    assert blobs == len(image.blobs)

    targets = [Target(mirror.host, https=True, job="main"), Target(f"127.0.0.1:{debug}")]
    with PrometheusServer(tmp_path / "prometheus", targets, binary=binary) as prometheus:
        for instance in (mirror.host, f"127.0.0.1:{debug}"):
            where = f'instance="{instance}"'
            prometheus.wait_for(f"up{{{where}}}", 1)
            prometheus.wait_for(
                'registry_mirror_cache_requests_total{registry="docker.io",kind="blob",'
                f'result="miss",{where}}}',
                len(image.blobs),
            )
            prometheus.wait_for(
                'registry_mirror_served_bytes_total{registry="docker.io",kind="blob",'
                f'result="miss",{where}}}',
                blob_bytes,
            )
            prometheus.wait_for(
                f'registry_mirror_upstream_received_bytes_total{{kind="blob",{where}}}', blob_bytes
            )
            prometheus.wait_for(f'registry_mirror_upstream_up{{registry="docker.io",{where}}}', 1)
            prometheus.wait_for(f"registry_mirror_storage_blobs{{{where}}}", len(image.blobs) + 1)
            labels = prometheus.wait_for(
                f'registry_mirror_build_info{{version="0.1.0",{where}}}', 1
            )
            assert labels["python"]
        # A histogram Prometheus can compute with: the blob requests' median is a number.
        prometheus.wait_for(
            'sum(registry_mirror_http_request_duration_seconds_count{route="blob",'
            f'instance="{mirror.host}"}})',
            len(image.blobs),
        )
        quantile = prometheus.query(
            "histogram_quantile(0.5, sum by (le)"
            " (registry_mirror_http_request_duration_seconds_bucket"
            f'{{route="blob",instance="{mirror.host}"}}))'
        )
        assert len(quantile) == 1 and float(quantile[0]["value"][1]) > 0
