"""Warm manifest requests/s (wrk), by digest and by tag; upstream requests per request."""

from __future__ import annotations

import re
from typing import Any, Literal

from bench.clients import http_get, sha256_bytes, wrk
from bench.config import MIRROR_NAME, REGISTRY_NAME, Config
from bench.context import Context
from bench.errors import BenchError
from bench.images import Image
from bench.measure import Measurement, Target, measure
from bench.report import Row, ratio_at_least, ratio_target
from bench.scenarios.base import Rows, Scenario

__all__ = ["ManifestRate", "verify_manifest"]

TARGET_RATIO = 10  # mirror / registry:2, by digest and by tag


def row_key(by: Literal["digest", "tag"]) -> str:
    return f"manifest_{by}_rps"


class ManifestRate(Scenario):
    """``wrk`` on the small image's manifest, by ``digest`` or by ``tag``, after a warm-up."""

    needs_wrk = True

    def __init__(self, by: Literal["digest", "tag"]) -> None:
        self.by = by
        self.group = by
        self.phase = f"manifest_by_{by}"
        self.key = row_key(by)

    def title(self, cfg: Config) -> str:
        return f"manifest requests/s by {self.by}"

    def rows(self, cfg: Config) -> list[Row]:
        label = f"Manifest by {self.by}, warm"
        return [Row(self.key, label, "req/s", "higher", target=ratio_target(TARGET_RATIO))]

    def run(self, ctx: Context, rows: Rows) -> None:
        measure(ctx.console, rows[self.key], ctx.targets, manifest_rps(ctx, self.by))

    def evaluate(self, rows: Rows) -> None:
        ratio_at_least(rows[self.key], TARGET_RATIO)

    def notes(self, rows: Rows) -> list[str]:
        if self.by != "tag":
            return []
        lines: list[str] = []
        for name in (MIRROR_NAME, REGISTRY_NAME):
            per = rows[self.key].details.get(name, {}).get("upstream_requests_per_request")
            if per is not None:
                lines.append(
                    f"  by tag: {name} sent {per:.3f} upstream manifest requests per request"
                )
        return lines


def verify_manifest(target: Target, image: Image, ref: str) -> None:
    """GET the manifest by ``ref``: status 200, the right digest and Content-Type."""
    status, headers, body = http_get(
        target.host, f"/v2/{image.repo}/manifests/{ref}", {"Accept": image.media_type}
    )
    if status != 200:
        raise BenchError(f"{target.name}: GET manifest {ref} -> {status}: {body[:300]!r}")
    if sha256_bytes(body) != image.digest:
        raise BenchError(f"{target.name}: manifest {ref} has digest {sha256_bytes(body)}")
    ctype = headers.get("content-type", "").split(";")[0].strip()
    if ctype != image.media_type:
        raise BenchError(f"{target.name}: manifest {ref} Content-Type {ctype!r}")


def manifest_rps(ctx: Context, by: Literal["digest", "tag"]) -> Measurement:
    cfg, upstream, image = ctx.cfg, ctx.upstream, ctx.images.small
    ref = image.digest if by == "digest" else image.tag

    def fn(target: Target) -> tuple[float, dict[str, Any]]:
        verify_manifest(target, image, image.tag)
        verify_manifest(target, image, image.digest)
        url = f"{target.url}/v2/{image.repo}/manifests/{ref}"
        common = {"threads": cfg.wrk_threads, "connections": cfg.wrk_connections}
        warm = wrk(ctx.runner, url, image.media_type, seconds=cfg.warmup, **common)
        upstream.clear_log()
        res = wrk(ctx.runner, url, image.media_type, seconds=cfg.duration, **common)
        upstream_manifest = upstream.count(
            None, "^" + re.escape(f"/v2/{image.repo}/manifests/") + "[^/]+$"
        )
        verify_manifest(target, image, ref)
        details: dict[str, Any] = {
            "url_ref": ref,
            "accept": image.media_type,
            "warmup": warm.as_dict(),
            **res.as_dict(),
            "upstream_manifest_requests": upstream_manifest,
            "upstream_requests_per_request": (
                round(upstream_manifest / res.requests, 4) if res.requests else None
            ),
        }
        if res.non_2xx_3xx or warm.non_2xx_3xx:
            raise BenchError(
                f"{res.non_2xx_3xx} non-2xx/3xx responses out of {res.requests} "
                f"(warm-up: {warm.non_2xx_3xx}); {res.rps:.0f} req/s",
                details,
                res.rps,
            )
        if any(res.socket_errors.values()):
            raise BenchError(
                f"wrk socket errors {res.socket_errors}; {res.rps:.0f} req/s", details, res.rps
            )
        return res.rps, details

    return fn
