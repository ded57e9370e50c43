"""Range requests on cold blobs: the first 64 KiB and the last 64 KiB of a fresh blob."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from bench.blobs import EDGE, FreshBlob
from bench.clients import CurlResult, curl_get, sha256_file
from bench.config import MIB, MIRROR_NAME, REGISTRY_NAME, Config
from bench.context import Context
from bench.errors import BenchError
from bench.measure import Measurement, Target, measure, upstream_downloads
from bench.report import Row, copy_errors
from bench.scenarios.base import Rows, Scenario, push_fresh, slug

__all__ = ["Ranges"]

Where = Literal["head", "tail"]
WHERE: tuple[Where, ...] = ("head", "tail")


def first_byte_key(where: Where) -> str:
    return f"range_{where}_first_byte"


def total_key(where: Where) -> str:
    return f"range_{where}_total"


def byte_range(where: Where, size: int) -> tuple[int, int]:
    """The first and last byte asked for."""
    return (0, EDGE - 1) if where == "head" else (size - EDGE, size - 1)


class Ranges(Scenario):
    """Per proxy and range, a blob nobody asked for before. The answer is judged as a client
    would: 206 with the right Content-Range and bytes, or 200 with the whole blob (a server
    may ignore Range); anything else, or wrong bytes, is an error."""

    group = "range"
    phase = "range"

    def title(self, cfg: Config) -> str:
        return f"Range requests on cold {cfg.cold_mib} MiB blobs"

    def rows(self, cfg: Config) -> list[Row]:
        size = cfg.cold_mib * MIB
        rows: list[Row] = []
        for where in WHERE:
            first, last = byte_range(where, size)
            asked = f"bytes={first}-{last}" if where == "head" else f"the last {EDGE // 1024} KiB"
            rows += [
                Row(
                    first_byte_key(where),
                    f"Range, {asked} of a cold {cfg.cold_mib} MiB blob: first byte",
                    "ms",
                    "lower",
                    decimals=1,
                ),
                Row(total_key(where), "  … whole answer", "ms", "lower", decimals=1),
            ]
        return rows

    def run(self, ctx: Context, rows: Rows) -> None:
        size = ctx.cfg.cold_mib * MIB
        blobs = push_fresh(
            ctx, rows, {t.name: (f"bench/range-{slug(t.name)}", size, 2) for t in ctx.targets}
        )
        if blobs is None:
            return
        names = [MIRROR_NAME, REGISTRY_NAME]
        for index, where in enumerate(WHERE):
            row, total = rows[first_byte_key(where)], rows[total_key(where)]
            picked = {name: b[index] for name, b in blobs.items()}
            measure(ctx.console, row, ctx.targets, range_get(ctx, picked, where))
            copy_errors(row, total, names)
            for name in names:
                det = row.details.get(name, {})
                if "total_ms" in det:
                    total.values[name] = det["total_ms"]

    def notes(self, rows: Rows) -> list[str]:
        lines: list[str] = []
        for where in WHERE:
            row = rows[first_byte_key(where)]
            answers = [
                f"{name} {det['answer']}"
                for name in (MIRROR_NAME, REGISTRY_NAME)
                if "answer" in (det := row.details.get(name, {}))
            ]
            if answers:
                lines.append(f"  range {where} of a cold blob: " + "; ".join(answers))
        return lines


def judge(
    blob: FreshBlob, where: Where, res: CurlResult, headers: str, body: Path
) -> tuple[str, bool]:
    """What the answer was, and whether a client got the bytes it asked for."""
    first, last = byte_range(where, blob.size)
    if res.code == 206:
        m = re.search(r"^content-range:\s*bytes (\d+)-(\d+)/(\d+|\*)", headers, re.I | re.M)
        span = (int(m[1]), int(m[2])) if m else None
        expected = blob.head if where == "head" else blob.tail
        right = span == (first, last) and res.size == EDGE and body.read_bytes() == expected
        got = "-" if span is None else f"{span[0]}-{span[1]}"
        return f"206 (bytes {got}), {'right' if right else 'WRONG'} bytes", right
    if res.code == 200:
        right = res.size == blob.size and sha256_file(body) == blob.digest
        return f"200 (the whole blob, {'right' if right else 'WRONG'} bytes)", right
    return f"{res.code} ({res.size} bytes)", False


def range_get(ctx: Context, blobs: dict[str, FreshBlob], where: Where) -> Measurement:
    def fn(target: Target) -> tuple[float, dict[str, Any]]:
        blob = blobs[target.name]
        first, last = byte_range(where, blob.size)
        ctx.settle()
        ctx.upstream.clear_log()
        body, head = ctx.scratch / "range.body", ctx.scratch / "range.headers"
        try:
            res = curl_get(
                ctx.runner,
                f"{target.url}{blob.path()}",
                body,
                timeout=900,
                headers=[f"Range: bytes={first}-{last}"],
                dump_headers=head,
            )
            answer, right = judge(blob, where, res, head.read_text(), body)
        finally:
            body.unlink(missing_ok=True)
            head.unlink(missing_ok=True)
        ctx.settle()  # whatever the server goes on fetching in the background
        downloads, sent = upstream_downloads(ctx.upstream, blob.digest)
        details: dict[str, Any] = {
            "range": f"bytes={first}-{last}",
            "blob_bytes": blob.size,
            "status": res.code,
            "bytes": res.size,
            "answer": answer,
            "right_bytes": right,
            "first_byte_ms": res.first_byte * 1000,
            "total_ms": res.seconds * 1000,
            "upstream_downloads": downloads,
            "upstream_bytes": sent,
        }
        if not right:
            raise BenchError(f"range {first}-{last}: {answer}", details, res.first_byte * 1000)
        return res.first_byte * 1000, details

    return fn
