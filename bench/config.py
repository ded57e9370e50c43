"""What a run measures (sizes, durations, media type) and the names of the two proxies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_MIRROR_BIN",
    "DEFAULT_OUTPUT",
    "DIRECT_NAME",
    "MB",
    "MIB",
    "MIRROR_NAME",
    "NGINX_NAME",
    "REFERENCE_NAMES",
    "REGISTRY_NAME",
    "ROOT",
    "Config",
]

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
MB = 1_000_000
MIRROR_NAME = "registry-mirror"
REGISTRY_NAME = "registry:2"
DIRECT_NAME = "direct"  # a client of the upstream itself, without a proxy
NGINX_NAME = "nginx"  # nginx's sendfile of the file the mirror cached
REFERENCE_NAMES = (DIRECT_NAME, NGINX_NAME)  # what the mirror is held against besides registry:2
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
DEFAULT_MIRROR_BIN = ROOT / ".venv" / "bin" / "registry-mirror"


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
    cold_mib: int
    cold_samples: int
    join_clients: int
    crowd_clients: int
    crowd_mib: int
    media: Literal["oci", "docker"]
