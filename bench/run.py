#!/usr/bin/env python3
"""Side-by-side benchmark: registry-mirror vs. registry:2 (distribution 2.8) in proxy mode.

Both proxies sit in front of the same upstream (a plain registry:2 on loopback) and are
measured with the same clients (curl, wrk, skopeo) in the same order.  Prints a rich table
and writes ``bench/results/latest.json``.  Run from the project root::

    .venv/bin/python bench/run.py            # full run (a few minutes)
    .venv/bin/python bench/run.py --quick    # smoke run (about a minute)

Every server listens on 127.0.0.1; every load loop is bounded in count or time; all
processes are stopped and the temporary directory is removed at the end, also on error or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.support.images import (  # noqa: E402
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    PushedImage,
    make_client,
    push_blob,
    push_image,
    push_manifest,
)
from tests.support.mirror import MirrorError, MirrorProcess  # noqa: E402
from tests.support.registry import RegistryError, RegistryProcess  # noqa: E402

T = TypeVar("T")

MIB = 1024 * 1024
MB = 1_000_000
MIRROR_NAME = "registry-mirror"
REGISTRY_NAME = "registry:2"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
DEFAULT_MIRROR_BIN = ROOT / ".venv" / "bin" / "registry-mirror"
GROUPS = ("blob", "digest", "tag", "pull", "herd")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

console = Console(highlight=False, width=max(130, shutil.get_terminal_size((130, 40)).columns))


# ----------------------------------------------------------------------------- processes

_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def _clean_env(tmp: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    for key in list(env):
        if key.startswith(("REGISTRY_", "REGISTRY_MIRROR_")):
            del env[key]
    env["NO_PROXY"] = env["no_proxy"] = "*"
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return env


CLIENT_ENV: dict[str, str] = _clean_env()


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run(args: Sequence[str], *, timeout: float) -> Proc:
    """Run a client process (tracked so that it can be killed on Ctrl-C), capture its output."""
    start = time.monotonic()
    proc = subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CLIENT_ENV,
    )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    return Proc(
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - start,
    )


def kill_clients() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def parallel(fn: Callable[[int], T], count: int, workers: int) -> list[T]:
    """``[fn(0), ..., fn(count - 1)]`` with at most ``workers`` running at once."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(fn, i) for i in range(count)]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            kill_clients()
            raise


class BenchError(RuntimeError):
    """A measurement could not be made or produced wrong results (``details``: what was seen)."""

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, value: float | None = None
    ) -> None:
        super().__init__(message)
        self.details = details or {}
        self.value = value  # the figure measured despite the failure, if any


# ----------------------------------------------------------------------------- helpers


def http_status(host: str, target: str, timeout: float = 2.0) -> int | None:
    hostname, _, port = host.partition(":")
    conn = http.client.HTTPConnection(hostname, int(port), timeout=timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def http_get(
    host: str, target: str, headers: dict[str, str], timeout: float = 60.0
) -> tuple[int, dict[str, str], bytes]:
    hostname, _, port = host.partition(":")
    conn = http.client.HTTPConnection(hostname, int(port), timeout=timeout)
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class CurlResult:
    code: int
    size: int
    seconds: float


def curl_get(url: str, out: str | Path = "/dev/null", *, timeout: float = 300.0) -> CurlResult:
    proc = run(
        [
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            str(int(timeout)),
            "-o",
            str(out),
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            url,
        ],
        timeout=timeout + 10,
    )
    if proc.returncode != 0:
        raise BenchError(f"curl {url} exited {proc.returncode}: {proc.stderr.strip()}")
    code, size, seconds = proc.stdout.split()
    return CurlResult(int(code), int(size), float(seconds))


@dataclass(frozen=True)
class Image:
    """What was pushed to the upstream (the bytes themselves are not kept)."""

    repo: str
    tag: str
    digest: str
    media_type: str
    blobs: dict[str, int]  # digest -> size, config first

    @classmethod
    def of(cls, pushed: PushedImage) -> Image:
        return cls(
            pushed.repo,
            pushed.tag,
            pushed.digest,
            pushed.media_type,
            {d: len(b) for d, b in pushed.blobs.items()},
        )

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"

    @property
    def total(self) -> int:
        return sum(self.blobs.values())


@dataclass
class Target:
    """One of the two proxies under test."""

    name: str
    host: str
    pid: int
    alive: Callable[[], bool]
    stderr_tail: Callable[[int], str]

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def check_alive(target: Target) -> None:
    if not target.alive():
        raise BenchError(f"{target.name} is not running any more")


def verify_manifest(target: Target, image: Image, ref: str) -> None:
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


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kib_field(status: dict[str, str], key: str) -> float | None:
    value = status.get(key)
    if value is None:
        return None
    return int(value.split()[0]) / 1024  # "123456 kB" -> MiB


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(p) for p in (task / "children").read_text().split()]
    return out


# ----------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    non_2xx_3xx: int
    socket_errors: dict[str, int]
    latency_ms: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "requests_per_s": self.rps,
            "non_2xx_3xx": self.non_2xx_3xx,
            "socket_errors": self.socket_errors,
            "latency_ms": self.latency_ms,
        }


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise BenchError(f"cannot parse wrk time {text!r}")
    return float(m[1]) * _UNIT_MS[m[2]]


def parse_wrk(output: str) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if m is None or rps is None:
        raise BenchError(f"cannot parse wrk output:\n{output}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sock is not None:
        errors = dict(zip(errors, (int(g) for g in sock.groups()), strict=True))
    latency: dict[str, float] = {}
    avg = re.search(r"Latency\s+([\d.]+\w+)", output)
    if avg is not None:
        latency["avg"] = _to_ms(avg[1])
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", output, re.M):
        latency[f"p{pct}"] = _to_ms(value)
    return WrkResult(
        requests=int(m[1]),
        seconds=_to_ms(m[2] + m[3]) / 1000,
        rps=float(rps[1]),
        non_2xx_3xx=int(non2xx[1]) if non2xx else 0,
        socket_errors=errors,
        latency_ms=latency,
    )


def wrk(url: str, accept: str, *, seconds: int, threads: int, connections: int) -> WrkResult:
    proc = run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Accept: {accept}",
            url,
        ],
        timeout=seconds + 60,
    )
    if proc.returncode != 0:
        raise BenchError(f"wrk exited {proc.returncode}: {proc.stderr.strip()}")
    return parse_wrk(proc.stdout)


def ensure_wrk() -> str | None:
    """Path of wrk, installing it with apt-get when running as root; None if unavailable."""
    path = shutil.which("wrk")
    if path is not None:
        return path
    if os.geteuid() != 0:
        console.print(
            "[yellow]wrk is not installed; install it with `sudo apt-get install -y wrk` "
            "(manifest rows skipped)[/]"
        )
        return None
    console.print("installing wrk with apt-get ...")
    cmd = ["apt-get", "install", "-y", "-q", "wrk"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(cmd, env=env, capture_output=True, check=False, timeout=600).returncode:
        subprocess.run(
            ["apt-get", "update", "-q"], env=env, capture_output=True, check=False, timeout=600
        )
        subprocess.run(cmd, env=env, capture_output=True, check=False, timeout=600)
    return shutil.which("wrk")


# ----------------------------------------------------------------------------- rows


@dataclass
class Row:
    key: str
    label: str
    unit: str
    better: Literal["higher", "lower"]
    values: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    target: str | None = None
    passed: bool | None = None
    decimals: int = 0
    skipped: bool = False
    flags: set[str] = field(default_factory=set)  # names whose figure is suspect (no error)

    def value(self, name: str) -> float | None:
        return self.values.get(name)

    @property
    def ratio(self) -> float | None:
        mirror, reg = self.value(MIRROR_NAME), self.value(REGISTRY_NAME)
        if mirror is None or reg is None or reg == 0:
            return None
        return mirror / reg

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "mirror": self.value(MIRROR_NAME),
            "registry2": self.value(REGISTRY_NAME),
            "ratio_mirror_over_registry2": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "skipped": self.skipped,
            "errors": self.errors,
            "details": self.details,
        }


@dataclass
class Config:
    blob_mib: int
    blob_gets: int
    blob_rounds: int
    blob_concurrency: int
    duration: int
    warmup: int
    wrk_threads: int
    wrk_connections: int
    pull_layers: int
    pull_mib: int
    warm_pulls: int
    herd_clients: int
    herd_layers: int
    herd_layer_mib: int
    media: Literal["oci", "docker"]


MEASURE_ERRORS = (
    BenchError,
    RegistryError,
    MirrorError,
    OSError,
    subprocess.SubprocessError,
    ValueError,
)
Measurement = Callable[[Target], tuple[float, dict[str, Any]]]


def _failed(row: Row, target: Target, exc: BaseException) -> None:
    row.values[target.name] = getattr(exc, "value", None)
    row.errors.append(f"{target.name}: {exc}")
    row.details[target.name] = {"error": str(exc), **getattr(exc, "details", {})}
    console.print(f"[red]  {row.label} / {target.name}: FAILED: {exc}[/]")
    tail = target.stderr_tail(30)
    if tail:
        console.print(f"[red]  {target.name} stderr (tail):[/]")
        console.print(tail, markup=False)


def _record(row: Row, target: Target, value: float, details: dict[str, Any]) -> None:
    row.values[target.name] = value
    row.details[target.name] = details
    console.print(f"  {row.label} / {target.name}: {value:.{row.decimals}f} {row.unit}")


def measure(row: Row, targets: Sequence[Target], fn: Measurement) -> None:
    """Run ``fn`` for each target in order; record value/details, or the error."""
    for target in targets:
        started = time.monotonic()
        try:
            check_alive(target)
            value, details = fn(target)
            check_alive(target)
        except MEASURE_ERRORS as exc:
            _failed(row, target, exc)
            continue
        details["elapsed_s"] = round(time.monotonic() - started, 2)
        _record(row, target, value, details)


def measure_rounds(
    row: Row,
    targets: Sequence[Target],
    *,
    prepare: Callable[[Target], dict[str, Any]],
    one_round: Measurement,
    rounds: int,
    finish: Callable[[Target], dict[str, Any]],
) -> None:
    """Prepare every target, then run the rounds interleaved (A B A B ...), then finish.

    Interleaving makes load that drifts over time (the machine may be shared) hit both alike.
    The value is the median of the rounds.
    """
    details: dict[str, dict[str, Any]] = {}
    values: dict[str, list[float]] = {}
    live: list[Target] = []
    for target in targets:
        try:
            check_alive(target)
            details[target.name] = {**prepare(target), "rounds": []}
        except MEASURE_ERRORS as exc:
            _failed(row, target, exc)
            continue
        values[target.name] = []
        live.append(target)
    for _ in range(rounds):
        for target in list(live):
            try:
                check_alive(target)
                value, info = one_round(target)
            except MEASURE_ERRORS as exc:
                _failed(row, target, exc)
                live.remove(target)
                continue
            values[target.name].append(value)
            details[target.name]["rounds"].append(info)
    for target in live:
        try:
            check_alive(target)
            details[target.name].update(finish(target))
        except MEASURE_ERRORS as exc:
            _failed(row, target, exc)
            continue
        _record(row, target, statistics.median(values[target.name]), details[target.name])


def upstream_client(target: Target, user_agent: str) -> bool:
    """Whether an upstream access-log line with this User-Agent came from ``target``."""
    return user_agent.startswith("registry-mirror") == (target.name == MIRROR_NAME)


def blob_throughput(
    cfg: Config,
    row: Row,
    targets: Sequence[Target],
    *,
    upstream: RegistryProcess,
    image: Image,
    tmp: Path,
) -> None:
    digest = list(image.blobs)[-1]  # the big layer
    size = image.blobs[digest]

    def url(target: Target) -> str:
        return f"{target.url}/v2/{image.repo}/blobs/{digest}"

    def prepare(target: Target) -> dict[str, Any]:
        # Cold pull through the proxy (fills its cache); check the content once.
        dest = tmp / f"cold-{target.pid}.blob"
        try:
            cold = curl_get(url(target), dest)
            if cold.code != 200 or cold.size != size:
                raise BenchError(f"cold GET -> {cold.code}, {cold.size} of {size} bytes")
            if sha256_file(dest) != digest:
                raise BenchError("cold GET returned wrong content (sha256 mismatch)")
        finally:
            dest.unlink(missing_ok=True)
        upstream.wait_idle(quiet=1.0, timeout=120)  # registry:2 stores in the background
        warm = curl_get(url(target))  # warm-up, discarded
        if warm.code != 200 or warm.size != size:
            raise BenchError(f"warm-up GET -> {warm.code}, {warm.size} of {size} bytes")
        upstream.clear_log()
        return {
            "blob_bytes": size,
            "gets_per_round": cfg.blob_gets,
            "concurrency": cfg.blob_concurrency,
            "cold_get_s": cold.seconds,
        }

    def one_round(target: Target) -> tuple[float, dict[str, Any]]:
        cpu_before = cpu_seconds(target.pid)
        start = time.monotonic()
        results = parallel(lambda _: curl_get(url(target)), cfg.blob_gets, cfg.blob_concurrency)
        wall = time.monotonic() - start
        cpu = cpu_seconds(target.pid) - cpu_before
        bad = [r for r in results if r.code != 200 or r.size != size]
        if bad:
            raise BenchError(
                f"{len(bad)}/{len(results)} GETs wrong: "
                + ", ".join(f"{r.code}/{r.size}B" for r in bad[:4])
                + f" (expected 200/{size}B)"
            )
        mb_s = sum(r.size for r in results) / wall / MB
        return mb_s, {
            "mb_per_s": round(mb_s, 1),
            "server_cpu_s_per_gib": cpu / (sum(r.size for r in results) / 2**30),
            "wall_s": round(wall, 3),
            "per_get_s": [r.seconds for r in results],
        }

    def finish(target: Target) -> dict[str, Any]:
        gets = sum(
            1
            for r in upstream.requests()
            if r.method == "GET"
            and r.path.endswith(f"/blobs/{digest}")
            and upstream_client(target, r.user_agent)
        )
        return {"upstream_gets_during_measurement": gets}

    measure_rounds(
        row, targets, prepare=prepare, one_round=one_round, rounds=cfg.blob_rounds, finish=finish
    )


def manifest_rps(
    cfg: Config, upstream: RegistryProcess, image: Image, by: Literal["digest", "tag"]
) -> Callable[[Target], tuple[float, dict[str, Any]]]:
    ref = image.digest if by == "digest" else image.tag

    def fn(target: Target) -> tuple[float, dict[str, Any]]:
        verify_manifest(target, image, image.tag)
        verify_manifest(target, image, image.digest)
        url = f"{target.url}/v2/{image.repo}/manifests/{ref}"
        common = {"threads": cfg.wrk_threads, "connections": cfg.wrk_connections}
        warm = wrk(url, image.media_type, seconds=cfg.warmup, **common)
        upstream.clear_log()
        res = wrk(url, image.media_type, seconds=cfg.duration, **common)
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
                f"(warm-up: {warm.non_2xx_3xx}); {res.rps:.0f} req/s"
            )
        if any(res.socket_errors.values()):
            raise BenchError(f"wrk socket errors {res.socket_errors}; {res.rps:.0f} req/s")
        return res.rps, details

    return fn


def skopeo_pull(target: Target, image: Image, dest: Path, timeout: float = 600.0) -> float:
    """``skopeo copy`` the image into a fresh ``dir:`` destination; seconds taken."""
    shutil.rmtree(dest, ignore_errors=True)
    proc = run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{target.host}/{image.ref}",
            f"dir:{dest}",
        ],
        timeout=timeout,
    )
    try:
        if proc.returncode != 0:
            raise BenchError(f"skopeo copy exited {proc.returncode}: {proc.stderr.strip()}")
        for digest in image.blobs:
            path = dest / digest.removeprefix("sha256:")
            if not path.exists():
                raise BenchError(f"skopeo copy: blob {digest} missing")
            if sha256_file(path) != digest:
                raise BenchError(f"skopeo copy: blob {digest} has the wrong content")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return proc.seconds


def pull_times(
    cfg: Config,
    rows: tuple[Row, Row],
    targets: Sequence[Target],
    *,
    upstream: RegistryProcess,
    images: dict[str, Image],
    tmp: Path,
) -> None:
    def cold(target: Target) -> tuple[float, dict[str, Any]]:
        image = images[target.name]
        upstream.wait_idle(quiet=0.5, timeout=120)
        upstream.clear_log()
        seconds = skopeo_pull(target, image, tmp / "pull-dest")
        upstream.wait_idle(quiet=1.0, timeout=120)  # registry:2 fills its cache afterwards
        blob_gets = upstream.count("GET", "^" + re.escape(f"/v2/{image.repo}/blobs/"))
        return seconds, {
            "repo": image.ref,
            "blobs": len(image.blobs),
            "bytes": image.total,
            "upstream_blob_gets": blob_gets,
        }

    def warm_prepare(target: Target) -> dict[str, Any]:
        image = images[target.name]
        skopeo_pull(target, image, tmp / "pull-dest")  # warm-up (cached since the cold row)
        upstream.clear_log()
        return {"repo": image.ref}

    def warm_round(target: Target) -> tuple[float, dict[str, Any]]:
        seconds = skopeo_pull(target, images[target.name], tmp / "pull-dest")
        return seconds, {"s": round(seconds, 3)}

    def warm_finish(target: Target) -> dict[str, Any]:
        repo = images[target.name].repo
        return {"upstream_blob_gets": upstream.count("GET", f"^/v2/{re.escape(repo)}/blobs/")}

    measure(rows[0], targets, cold)
    measure_rounds(
        rows[1],
        targets,
        prepare=warm_prepare,
        one_round=warm_round,
        rounds=cfg.warm_pulls,
        finish=warm_finish,
    )


def herd(
    cfg: Config,
    upstream: RegistryProcess,
    images: dict[str, Image],
    tmp: Path,
    wall_times: dict[str, float],
) -> Callable[[Target], tuple[float, dict[str, Any]]]:
    def fn(target: Target) -> tuple[float, dict[str, Any]]:
        image = images[target.name]
        clients = cfg.herd_clients
        upstream.wait_idle(quiet=0.5, timeout=120)
        upstream.clear_log()
        work = tmp / "herd"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        start = time.monotonic()
        failures: list[str] = []
        wrong = 0
        wall = 0.0
        try:
            # Phase 1: every client GETs the manifest by tag, all at once.
            gate = threading.Barrier(clients, timeout=60)

            def get_manifest(i: int) -> str:
                gate.wait()
                status, _, body = http_get(
                    target.host,
                    f"/v2/{image.repo}/manifests/{image.tag}",
                    {"Accept": image.media_type},
                )
                if status != 200:
                    raise BenchError(f"client {i}: manifest GET -> {status}")
                return sha256_bytes(body)

            got = parallel(get_manifest, clients, clients)
            if any(d != image.digest for d in got):
                raise BenchError(f"manifest digests differ from {image.digest}: {set(got)}")

            # Phase 2: every client GETs all blobs (in parallel, one curl each), all at once.
            gate2 = threading.Barrier(clients, timeout=60)

            def get_blobs(i: int) -> Proc:
                args = ["curl", "-sS", "--no-progress-meter", "--noproxy", "*", "--fail"]
                args += ["--max-time", "600"]
                args += ["--parallel", "--parallel-immediate", "--parallel-max", "8"]
                args += ["-w", "%{http_code} %{size_download}\\n"]
                for digest in image.blobs:
                    args += [f"{target.url}/v2/{image.repo}/blobs/{digest}"]
                    args += ["-o", str(work / f"{i}-{digest.removeprefix('sha256:')}")]
                gate2.wait()
                return run(args, timeout=660)

            procs = parallel(get_blobs, clients, clients)
            wall = time.monotonic() - start
            for i, proc in enumerate(procs):
                if proc.returncode != 0:
                    failures.append(
                        f"client {i}: curl exited {proc.returncode}: {proc.stderr.strip()[:200]}"
                    )
            for i in range(clients):
                for digest in image.blobs:
                    path = work / f"{i}-{digest.removeprefix('sha256:')}"
                    if procs[i].returncode == 0 and (
                        not path.exists() or sha256_file(path) != digest
                    ):
                        wrong += 1
                    path.unlink(missing_ok=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        upstream.wait_idle(quiet=1.5, timeout=180)  # registry:2's background cache fills
        downloads: Counter[str] = Counter()
        heads = 0
        manifest_reqs = 0
        upstream_bytes = 0
        for req in upstream.requests():
            if not req.path.startswith(f"/v2/{image.repo}/"):
                continue
            m = re.search(r"/blobs/(sha256:[0-9a-f]{64})$", req.path)
            if m is not None and req.method == "GET" and req.status in (200, 206):
                downloads[m[1]] += 1
                upstream_bytes += req.size
            elif m is not None and req.method == "HEAD":
                heads += 1
            elif "/manifests/" in req.path:
                manifest_reqs += 1
        per_blob = {d: downloads.get(d, 0) for d in image.blobs}
        layers = list(image.blobs)[1:]
        mean = statistics.mean(per_blob.values())
        details: dict[str, Any] = {
            "repo": image.ref,
            "clients": clients,
            "blob_sizes": image.blobs,
            "downloads_per_blob": per_blob,
            "max_downloads_per_blob": max(per_blob.values()),
            "mean_downloads_per_layer": statistics.mean(per_blob[d] for d in layers),
            "upstream_blob_heads": heads,
            "upstream_manifest_requests": manifest_reqs,
            "upstream_blob_bytes": upstream_bytes,
            "image_bytes": image.total,
            "all_clients_wall_s": round(wall, 3),
            "failed_clients": failures,
            "wrong_blobs": wrong,
        }
        wall_times[target.name] = wall
        if failures or wrong:
            raise BenchError(
                f"{len(failures)}/{clients} clients failed, {wrong} blobs with wrong bytes "
                f"(upstream downloads per blob meanwhile: {list(per_blob.values())}); "
                + "; ".join(failures[:3]),
                details,
                mean,
            )
        return mean, details

    return fn


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Config]:
    p = argparse.ArgumentParser(
        description="Benchmark registry-mirror against registry:2 (proxy mode) on loopback.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a ~1 minute smoke run")
    p.add_argument("--blob-mib", type=int, help="size of the big layer (default 256; quick 32)")
    p.add_argument("--blob-gets", type=int, default=8, help="cache-hit GETs of the big layer")
    p.add_argument("--blob-concurrency", type=int, default=4, help="concurrent cache-hit GETs")
    p.add_argument(
        "--blob-rounds", type=int, default=3, help="rounds of --blob-gets GETs; median MB/s"
    )
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; quick 3)")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wrk-connections", type=int, default=32)
    p.add_argument("--pull-layers", type=int, default=5, help="layers of the pull-time image")
    p.add_argument("--pull-mib", type=int, help="size of the pull-time image (default 40; quick 8)")
    p.add_argument("--warm-pulls", type=int, help="warm pulls, median taken (default 5; quick 2)")
    p.add_argument("--herd-clients", type=int, default=16, help="concurrent cold clients")
    p.add_argument("--herd-layers", type=int, default=3)
    p.add_argument("--herd-layer-mib", type=int, help="layer size (default 20; quick 4)")
    p.add_argument("--media", choices=("oci", "docker"), default="oci")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    p.add_argument("--mirror-bin", type=Path, default=DEFAULT_MIRROR_BIN)
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default=set(GROUPS),
        metavar="GROUPS",
        help=f"comma-separated subset of {','.join(GROUPS)} (peak RSS is always reported)",
    )
    args = p.parse_args(argv)
    if not args.only <= set(GROUPS):
        p.error(f"--only: unknown groups {sorted(args.only - set(GROUPS))}")

    def pick(value: int | None, full: int, quick: int) -> int:
        return value if value is not None else (quick if args.quick else full)

    cfg = Config(
        blob_mib=pick(args.blob_mib, 256, 32),
        blob_gets=args.blob_gets,
        blob_rounds=args.blob_rounds,
        blob_concurrency=args.blob_concurrency,
        duration=pick(args.duration, 10, 3),
        warmup=1 if args.quick else 2,
        wrk_threads=args.wrk_threads,
        wrk_connections=args.wrk_connections,
        pull_layers=args.pull_layers,
        pull_mib=pick(args.pull_mib, 40, 8),
        warm_pulls=pick(args.warm_pulls, 5, 2),
        herd_clients=args.herd_clients,
        herd_layers=args.herd_layers,
        herd_layer_mib=pick(args.herd_layer_mib, 20, 4),
        media=args.media,
    )
    for name in ("blob_mib", "blob_gets", "blob_rounds", "duration", "pull_mib", "herd_clients"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args, cfg


def tool_version(args: Sequence[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=10, check=False)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]
    return "?"


def big_layer(size: int, seed: int) -> tuple[bytes, str]:
    """(gzip-compressed tar holding one file of ``size`` random bytes, diff_id).

    Like the test support's layers, but generated in chunks: ``random.randbytes`` cannot make
    256 MiB at once, and level-1 gzip of random data keeps the blob about ``size`` bytes.
    """
    rng = random.Random(seed)
    info = tarfile.TarInfo(f"big-{seed}.bin")
    info.size, info.mode, info.mtime = size, 0o644, 1767225600
    header = info.tobuf(tarfile.USTAR_FORMAT)
    tail = b"\0" * (-size % 512) + b"\0" * 1024
    tail += b"\0" * (-(len(header) + size + len(tail)) % tarfile.RECORDSIZE)
    diff = hashlib.sha256()
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    out: list[bytes] = []
    for part in (
        header,
        *(rng.randbytes(min(16 * MIB, size - o)) for o in range(0, size, 16 * MIB)),
        tail,
    ):
        diff.update(part)
        out.append(gz.compress(part))
    out.append(gz.flush())
    return b"".join(out), "sha256:" + diff.hexdigest()


def push_big_image(
    base_url: str, repo: str, tag: str, *, size: int, media: str, seed: int
) -> Image:
    """Push a one-layer image whose layer holds ``size`` random bytes."""
    manifest_type, config_type, layer_type = (
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
        if media == "oci"
        else (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP)
    )
    layer, diff_id = big_layer(size, seed)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    with make_client(timeout=600) as client:
        config_digest = push_blob(client, base_url, repo, config)
        layer_digest = push_blob(client, base_url, repo, layer)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": len(layer)}],
            }
        ).encode()
        digest = push_manifest(client, base_url, repo, tag, manifest, manifest_type)
    return Image(
        repo, tag, digest, manifest_type, {config_digest: len(config), layer_digest: len(layer)}
    )


@dataclass
class Images:
    big: Image  # one big layer (blob throughput)
    small: Image  # two small layers (manifest rows)
    pulls: dict[str, Image]  # per proxy (cold/warm pull)
    herds: dict[str, Image]  # per proxy (concurrent cold clients)


def push_images(cfg: Config, upstream_url: str) -> Images:
    """Push every test image to the upstream; returns their summaries."""
    media = cfg.media
    started = time.monotonic()
    big = push_big_image(
        upstream_url, "bench/big", "v1", size=cfg.blob_mib * MIB, media=media, seed=101
    )
    small = Image.of(
        push_image(upstream_url, "bench/small", "v1", layers=[1024, 4096], media=media, seed=102)
    )
    layer = cfg.pull_mib * MIB // cfg.pull_layers
    pulls = {
        name: Image.of(
            push_image(
                upstream_url,
                f"bench/pull-{slug}",
                "v1",
                layers=[layer] * cfg.pull_layers,
                media=media,
                seed=seed,
            )
        )
        for name, slug, seed in ((MIRROR_NAME, "mirror", 201), (REGISTRY_NAME, "registry2", 202))
    }
    herds = {
        name: Image.of(
            push_image(
                upstream_url,
                f"bench/herd-{slug}",
                "v1",
                layers=[cfg.herd_layer_mib * MIB] * cfg.herd_layers,
                media=media,
                seed=seed,
            )
        )
        for name, slug, seed in ((MIRROR_NAME, "mirror", 301), (REGISTRY_NAME, "registry2", 302))
    }
    console.print(f"pushed test images to the upstream in {time.monotonic() - started:.1f}s")
    return Images(big, small, pulls, herds)


def evaluate(rows: dict[str, Row]) -> None:
    def ratio_at_least(row: Row, limit: float) -> None:
        row.target = f"ratio ≥ {limit:g}x"
        row.passed = None if row.errors or row.ratio is None else row.ratio >= limit
        if row.errors:
            row.passed = False

    ratio_at_least(rows["blob_throughput"], 1.5)
    ratio_at_least(rows["manifest_digest_rps"], 10)
    herd_row = rows["herd_downloads_per_blob"]
    herd_row.target = "mirror = 1 per blob"
    mirror_herd = herd_row.details.get(MIRROR_NAME, {})
    herd_row.passed = (
        not any(e.startswith(f"{MIRROR_NAME}:") for e in herd_row.errors)
        and herd_row.value(MIRROR_NAME) is not None
        and mirror_herd.get("max_downloads_per_blob") == 1
        and min(mirror_herd.get("downloads_per_blob", {0: 0}).values()) == 1
    )
    rss = rows["peak_rss"]
    rss.target = "mirror ≤ 100 MiB"
    mirror_rss = rss.value(MIRROR_NAME)
    for row in rows.values():
        if row.skipped:
            row.passed = None
    rss.passed = (
        mirror_rss is not None
        and mirror_rss <= 100
        and not any(e.startswith(f"{MIRROR_NAME}:") for e in rss.errors)
    )


def render(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column(MIRROR_NAME, justify="right")
    table.add_column(REGISTRY_NAME, justify="right")
    table.add_column("ratio\n(mirror/r2)", justify="right")
    table.add_column("better", justify="center")
    table.add_column("target")
    table.add_column("result")

    for row in rows:
        cells: list[str] = []
        for name in (MIRROR_NAME, REGISTRY_NAME):
            value = row.value(name)
            failed = name in row.flags or any(e.startswith(f"{name}:") for e in row.errors)
            if value is None:
                cells.append("[red]error[/]" if failed else "-")
            else:
                cells.append(f"{value:,.{row.decimals}f}" + (" [red](!)[/]" if failed else ""))
        ratio = row.ratio
        if row.skipped:
            result = "[dim]skipped[/]"
        elif row.passed is None:
            result = "[red]ERROR[/]" if row.errors else ""
        else:
            result = "[green]PASS[/]" if row.passed else "[red]FAIL[/]"
        table.add_row(
            f"{row.label} [dim]({row.unit})[/]",
            *cells,
            "-" if ratio is None else f"{ratio:.2f}x",
            "↑" if row.better == "higher" else "↓",
            row.target or "",
            result,
        )
    return table


def bench(args: argparse.Namespace, cfg: Config, tmp: Path) -> tuple[list[Row], dict[str, Any]]:
    global CLIENT_ENV  # noqa: PLW0603 - clients write their temp files into our temp dir
    CLIENT_ENV = _clean_env(tmp)
    for tool in ("curl", "skopeo"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (apt-get install -y {tool})")
    if shutil.which("docker-registry") is None:
        raise BenchError("docker-registry is not installed (apt-get install -y docker-registry)")
    if not args.mirror_bin.exists():
        raise BenchError(f"{args.mirror_bin} does not exist (pip install -e . in the venv?)")
    wrk_path = ensure_wrk()

    load = os.getloadavg()
    if load[0] > 1.0:
        console.print(
            f"[yellow]warning: load average {load[0]:.1f} on {os.cpu_count()} CPUs before the run; "
            "other work on the machine makes the figures noisy[/]"
        )
    env_info: dict[str, Any] = {
        "loadavg_before": load,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "docker_registry": tool_version(["docker-registry", "--version"]),
        "skopeo": tool_version(["skopeo", "--version"]),
        "curl": tool_version(["curl", "--version"]),
        "wrk": tool_version(["wrk", "-v"]) if wrk_path else None,
    }

    stack = contextlib.ExitStack()
    with stack:
        upstream = RegistryProcess(tmp / "upstream")
        stack.callback(upstream.stop)
        upstream.start()
        images = push_images(cfg, upstream.url)

        mirror = MirrorProcess(
            tmp / "mirror",
            upstream.url,
            args=["--log-level", "warning"],
            dockerhub=False,
            binary=str(args.mirror_bin),
        )
        stack.callback(mirror.stop)
        mirror.start(timeout=30)
        proxy = RegistryProcess(tmp / "registry2-proxy", proxy_remoteurl=upstream.url)
        stack.callback(proxy.stop)
        proxy.start()
        console.print(
            f"upstream {upstream.url}, {MIRROR_NAME} {mirror.url} (pid {mirror.pid}), "
            f"{REGISTRY_NAME} proxy {proxy.url} (pid {proxy.pid})"
        )

        def registry_tail(lines: int) -> str:
            return proxy.stderr_tail(lines)

        targets = [
            Target(
                MIRROR_NAME, mirror.host, mirror.pid, lambda: mirror.running, mirror.stderr_tail
            ),
            Target(REGISTRY_NAME, proxy.host, proxy.pid, lambda: proxy.running, registry_tail),
        ]
        forks: set[int] = set()
        phases: dict[str, dict[str, Any]] = {}

        def checkpoint(phase: str) -> None:
            """Memory of both servers and the mirror's children after each phase."""
            forks.update(child_pids(mirror.pid))
            phases[phase] = {"loadavg_1m": round(os.getloadavg()[0], 2)}
            for t in targets:
                status = proc_status(t.pid)
                phases[phase][t.name] = {
                    "VmHWM_MiB": kib_field(status, "VmHWM"),
                    "VmRSS_MiB": kib_field(status, "VmRSS"),
                }

        checkpoint("start")

        big, small = images.big, images.small
        rows: dict[str, Row] = {
            "blob_throughput": Row(
                "blob_throughput",
                f"Blob cache hit, {cfg.blob_mib} MiB x {cfg.blob_gets} "
                f"({cfg.blob_concurrency} concurrent)",
                "MB/s",
                "higher",
            ),
            "blob_cpu": Row(
                "blob_cpu",
                "  … server CPU time per GiB served from cache",
                "s/GiB",
                "lower",
                decimals=3,
            ),
            "blob_cold": Row(
                "blob_cold",
                "  … first GET of that blob (cache miss, single sample)",
                "MB/s",
                "higher",
            ),
            "manifest_digest_rps": Row(
                "manifest_digest_rps", "Manifest by digest, warm", "req/s", "higher"
            ),
            "manifest_tag_rps": Row("manifest_tag_rps", "Manifest by tag, warm", "req/s", "higher"),
            "cold_pull": Row(
                "cold_pull",
                f"Cold pull, {cfg.pull_layers} layers / {cfg.pull_mib} MiB (skopeo)",
                "s",
                "lower",
                decimals=2,
            ),
            "warm_pull": Row(
                "warm_pull",
                f"Warm pull, same image (median of {cfg.warm_pulls})",
                "s",
                "lower",
                decimals=2,
            ),
            "herd_downloads_per_blob": Row(
                "herd_downloads_per_blob",
                f"Upstream downloads per blob, {cfg.herd_clients} concurrent cold clients",
                "GETs",
                "lower",
                decimals=2,
            ),
            "herd_wall": Row(
                "herd_wall",
                f"  … time until all {cfg.herd_clients} clients have the image",
                "s",
                "lower",
                decimals=2,
            ),
            "peak_rss": Row(
                "peak_rss", "Peak RSS of the server process", "MiB", "lower", decimals=1
            ),
        }

        for key, group in (
            ("blob_throughput", "blob"),
            ("blob_cold", "blob"),
            ("blob_cpu", "blob"),
            ("manifest_digest_rps", "digest"),
            ("manifest_tag_rps", "tag"),
            ("cold_pull", "pull"),
            ("warm_pull", "pull"),
            ("herd_downloads_per_blob", "herd"),
            ("herd_wall", "herd"),
        ):
            rows[key].skipped = group not in args.only

        if "blob" in args.only:
            console.rule("1. blob cache-hit throughput")
            blob_row = rows["blob_throughput"]
            blob_throughput(cfg, blob_row, targets, upstream=upstream, image=big, tmp=tmp)
            for name, det in blob_row.details.items():
                if isinstance(det, dict) and det.get("cold_get_s"):
                    rows["blob_cold"].values[name] = det["blob_bytes"] / det["cold_get_s"] / MB
                if isinstance(det, dict) and det.get("rounds"):
                    per_gib = [r["server_cpu_s_per_gib"] for r in det["rounds"]]
                    rows["blob_cpu"].values[name] = statistics.median(per_gib)
            checkpoint("blob")
        by: Literal["digest", "tag"]
        for by in ("digest", "tag"):
            key = f"manifest_{by}_rps"
            if by not in args.only:
                continue
            console.rule(f"{2 if by == 'digest' else 3}. manifest requests/s by {by}")
            if wrk_path is None:
                rows[key].errors.append("wrk is not installed")
                continue
            measure(rows[key], targets, manifest_rps(cfg, upstream, small, by))
            checkpoint(f"manifest_by_{by}")
        if "pull" in args.only:
            console.rule("4. cold and warm pull time")
            pull_rows = (rows["cold_pull"], rows["warm_pull"])
            pull_times(cfg, pull_rows, targets, upstream=upstream, images=images.pulls, tmp=tmp)
            checkpoint("pull")
        if "herd" in args.only:
            console.rule(f"5. {cfg.herd_clients} concurrent cold clients")
            walls: dict[str, float] = {}
            herd_fn = herd(cfg, upstream, images.herds, tmp, walls)
            measure(rows["herd_downloads_per_blob"], targets, herd_fn)
            rows["herd_wall"].values.update(walls)
            for error in rows["herd_downloads_per_blob"].errors:
                rows["herd_wall"].flags.add(error.partition(":")[0])
            checkpoint("herd")

        console.rule("6. peak RSS")
        rss_row = rows["peak_rss"]
        for target in targets:
            status = proc_status(target.pid)
            hwm = kib_field(status, "VmHWM")
            if not target.alive() or hwm is None:
                rss_row.errors.append(f"{target.name}: process not running, no VmHWM")
                continue
            rss_row.values[target.name] = hwm
            rss_row.details[target.name] = {
                "VmHWM_MiB": hwm,
                "VmRSS_MiB": kib_field(status, "VmRSS"),
                "threads": int(status.get("Threads", "0")),
            }
        children = sorted(forks | set(child_pids(mirror.pid)))
        rss_row.details["mirror_child_processes"] = children
        rss_row.details["after_phase"] = phases
        if children:
            rss_row.errors.append(
                f"{MIRROR_NAME}: has child processes {children}; VmHWM covers only the parent"
            )
        for target in targets:
            console.print(f"  {target.name}: {rss_row.details.get(target.name)}")

        env_info["loadavg_after"] = os.getloadavg()
        evaluate(rows)
        mirror_stderr = mirror.stderr_tail(200)
        env_info["mirror_stderr_tail"] = mirror_stderr.splitlines()[-50:]
        if mirror_stderr.strip():
            n = len(mirror.log().splitlines())
            console.rule(f"{MIRROR_NAME} stderr ({n} lines at level warning; last 20)")
            console.print("\n".join(mirror_stderr.splitlines()[-20:]), markup=False)
    return list(rows.values()), env_info


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignored
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="registry-mirror-bench-"))
    rows: list[Row] = []
    env_info: dict[str, Any] = {}
    code = 0
    try:
        console.print(f"temp dir {tmp}; config {cfg}")
        rows, env_info = bench(args, cfg, tmp)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    except Exception as exc:
        console.print(f"[red]benchmark failed: {exc}[/]")
        traceback.print_exc()
        return 1
    finally:
        kill_clients()
        if args.keep_tmp:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started

    title = (
        f"registry-mirror vs registry:2 (distribution 2.8) proxy, loopback, "
        f"{os.cpu_count()} CPUs{' — QUICK' if args.quick else ''}"
    )
    console.print()
    console.print(render(rows, title))
    tag_row = next(r for r in rows if r.key == "manifest_tag_rps")
    for name in (MIRROR_NAME, REGISTRY_NAME):
        per = tag_row.details.get(name, {}).get("upstream_requests_per_request")
        if per is not None:
            console.print(f"  by tag: {name} sent {per:.3f} upstream manifest requests per request")
    console.print(f"total run time {elapsed:.0f}s")

    result = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "config": cfg.__dict__,
        "environment": env_info,
        "run_seconds": round(elapsed, 1),
        "rows": [r.as_dict() for r in rows],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    console.print(f"results written to {args.output}")
    if any(r.errors for r in rows) or any(r.passed is False for r in rows):
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
