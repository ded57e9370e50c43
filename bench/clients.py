"""The clients that load the proxies: plain HTTP, curl, wrk and skopeo."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.config import MIB
from bench.errors import BenchError
from bench.images import Image
from bench.procs import Runner

__all__ = [
    "CurlResult",
    "StreamResult",
    "WrkResult",
    "curl_get",
    "ensure_wrk",
    "http_get",
    "parse_wrk",
    "sha256_bytes",
    "sha256_file",
    "skopeo_pull",
    "stream_sha256",
    "wrk",
]


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


# ----------------------------------------------------------------------------- curl


@dataclass
class CurlResult:
    code: int
    size: int
    seconds: float  # until the last byte
    first_byte: float = 0.0  # seconds until the first byte of the answer


def curl_get(
    runner: Runner,
    url: str,
    out: str | Path = "/dev/null",
    *,
    timeout: float = 300.0,
    headers: Sequence[str] = (),
    dump_headers: Path | None = None,
) -> CurlResult:
    """GET ``url`` with curl into ``out``; ``headers`` ("Name: value") are sent, the
    answer's headers written to ``dump_headers`` if given."""
    args = ["curl", "-sS", "--noproxy", "*", "--max-time", str(int(timeout)), "-o", str(out)]
    for header in headers:
        args += ["-H", header]
    if dump_headers is not None:
        args += ["-D", str(dump_headers)]
    args += ["-w", "%{http_code} %{size_download} %{time_total} %{time_starttransfer}", url]
    proc = runner.run(args, timeout=timeout + 10)
    if proc.returncode != 0:
        raise BenchError(f"curl {url} exited {proc.returncode}: {proc.stderr.strip()}")
    code, size, seconds, first_byte = proc.stdout.split()
    return CurlResult(int(code), int(size), float(seconds), float(first_byte))


@dataclass
class StreamResult:
    status: int
    size: int
    digest: str  # sha256 of the body
    seconds: float


def stream_sha256(
    host: str,
    target: str,
    *,
    stop: threading.Event,
    timeout: float = 300.0,
    chunk: int = 256 * 1024,
) -> StreamResult:
    """GET ``target`` from ``host``, hashing the body as it arrives (nothing is stored).

    Gives up with :class:`BenchError` once ``stop`` is set or after ``timeout`` seconds.
    """
    hostname, _, port = host.partition(":")
    start = time.monotonic()
    deadline = start + timeout
    conn = http.client.HTTPConnection(hostname, int(port), timeout=min(timeout, 60.0))
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        h = hashlib.sha256()
        size = 0
        buf = memoryview(bytearray(chunk))
        while n := resp.readinto(buf):
            h.update(buf[:n])
            size += n
            if stop.is_set():
                raise BenchError("stopped")
            if time.monotonic() > deadline:
                raise BenchError(f"GET {target}: not done after {timeout:.0f}s ({size} bytes)")
        return StreamResult(resp.status, size, "sha256:" + h.hexdigest(), time.monotonic() - start)
    finally:
        conn.close()


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


def wrk(
    runner: Runner, url: str, accept: str, *, seconds: int, threads: int, connections: int
) -> WrkResult:
    proc = runner.run(
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


def ensure_wrk(console: Console) -> str | None:
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


# ----------------------------------------------------------------------------- skopeo


def skopeo_pull(
    runner: Runner, host: str, image: Image, dest: Path, timeout: float = 600.0
) -> float:
    """``skopeo copy`` the image from ``host`` into a fresh ``dir:`` destination; seconds taken.

    Every blob is checked by sha256; the destination is removed afterwards.
    """
    shutil.rmtree(dest, ignore_errors=True)
    proc = runner.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{host}/{image.ref}",
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
