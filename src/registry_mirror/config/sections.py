"""The sections of the settings, one model each, as registry:2's config file names
them (``http``, ``proxy``, ``storage``, ``auth``) plus the mirror's own (``upstreams``,
``access``, ``limits``): every key, its type and its default. A section refuses keys it
does not know and cannot be changed once built."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from registry_mirror.config.values import (
    CommaList,
    Duration,
    ProxyUrl,
    Size,
    Url,
    host_port,
    redact_url,
)

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_HOSTS",
    "AccessSettings",
    "AuthSettings",
    "DebugSettings",
    "FileCheckSettings",
    "FilesystemSettings",
    "HTTPCheckSettings",
    "HTTPSettings",
    "HealthSettings",
    "HtpasswdSettings",
    "LimitSettings",
    "LogSettings",
    "MetricsSettings",
    "PrometheusSettings",
    "ProxySettings",
    "Section",
    "StorageDriverCheckSettings",
    "StorageSettings",
    "TCPCheckSettings",
    "TLSSettings",
    "UpstreamCommon",
    "UpstreamList",
    "UpstreamSettings",
]

DOCKER_HUB: Final = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS: Final = frozenset(
    {"registry-1.docker.io", "docker.io", "index.docker.io", "registry.hub.docker.com"}
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSSettings(Section):
    certificate: Path | None = None
    key: Path | None = None


class PrometheusSettings(Section):
    enabled: bool = False  # registry:2's key: the metrics on the debug listener
    path: str = "/metrics"


class DebugSettings(Section):
    """registry:2's debug listener (``http.debug``): plain HTTP on an address of its own,
    serving the metrics when ``prometheus.enabled``."""

    addr: str | None = None
    prometheus: PrometheusSettings = PrometheusSettings()


class HTTPSettings(Section):
    addr: str = ":5000"
    tls: TLSSettings = TLSSettings()
    debug: DebugSettings = DebugSettings()
    idle_timeout: Duration = 75.0  # a connection must send a whole request within this
    write_timeout: Duration = 300.0  # a client that takes no response bytes this long is dropped
    max_headers: int = 100
    max_header_size: Size = 8190
    # SIGTERM: requests and downloads in progress get this long to finish (registry:2's key).
    draintimeout: Duration = 25.0


class UpstreamCommon(Section):
    username: str | None = None
    password: SecretStr | None = None
    dockerhub: bool | None = None  # Docker Hub naming (library/); None: detect from the URL
    aliases: CommaList = []  # more names for it, as path prefixes: /v2/<alias>/<repo>/…
    allow: CommaList = []  # repository globs that may be pulled (empty: all)
    deny: CommaList = []  # repository globs that may not
    connect_timeout: Duration = 10.0
    read_timeout: Duration = 60.0
    # Whole time a metadata request (manifest, tag list, token) may take, retries and
    # authentication included, before the cached answer is served instead.
    metadata_timeout: Duration = 5.0
    # Follow redirects (and use token realms) at loopback, private or link-local
    # addresses other than the upstream's own host (a CDN on the LAN).
    allow_private_redirects: bool = False
    # Forward proxy: http://[user:password@]host:port, or none; unset: the environment's
    # HTTP_PROXY / HTTPS_PROXY / NO_PROXY.
    proxy: ProxyUrl | None = None

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    @property
    def is_dockerhub(self) -> bool:
        if self.dockerhub is not None:
            return self.dockerhub
        host = (urlsplit(self.base_url).hostname or "").lower()
        return host in DOCKER_HUB_HOSTS

    @property
    def registry_name(self) -> str:
        """The name clients use for it (``?ns=``, path prefix, cache keys)."""
        return "docker.io" if self.is_dockerhub else host_port(self.base_url)

    @property
    def registry_names(self) -> frozenset[str]:
        """Every name that selects this upstream."""
        names = {self.registry_name, host_port(self.base_url), *self.aliases}
        if self.is_dockerhub:
            names |= {"docker.io", *DOCKER_HUB_HOSTS}
        return frozenset(name.lower() for name in names)


class ProxySettings(UpstreamCommon):
    """registry:2's ``proxy`` section: the default upstream."""

    remoteurl: Url = DOCKER_HUB
    name: str | None = None

    @property
    def base_url(self) -> str:
        return self.remoteurl

    @property
    def registry_name(self) -> str:
        return self.name.lower() if self.name else super().registry_name


class UpstreamSettings(UpstreamCommon):
    """One more upstream (``upstreams:`` list): ghcr.io, quay.io, a private registry…"""

    name: str
    url: Url

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def registry_name(self) -> str:
        return self.name.lower()


def _yaml_list(value: object) -> object:
    """A list of mappings (``upstreams``, ``health.http``…) from a flag or variable: YAML
    or JSON."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError("expected a YAML or JSON list of mappings") from None
    return value


UpstreamList = Annotated[list[UpstreamSettings], BeforeValidator(_yaml_list)]


class FilesystemSettings(Section):
    rootdirectory: Path | None = None


class StorageSettings(Section):
    filesystem: FilesystemSettings = FilesystemSettings()
    quota: Size | None = None  # bytes on disk for the cache; LRU eviction above it
    min_free: Size | None = None  # keep this much of the filesystem free
    max_idle: Duration | None = None  # evict content not served for this long


class HtpasswdSettings(Section):
    path: Path | None = None
    realm: str = "registry-mirror"


class AuthSettings(Section):
    """Who may pull (registry:2's ``auth.htpasswd`` keys, plus an anonymous read policy)."""

    htpasswd: HtpasswdSettings = HtpasswdSettings()
    # Repositories readable without logging in when htpasswd is set, as globs over
    # registry/repository: "docker.io/*", "ghcr.io/public-org/*".
    anonymous: CommaList = []
    # Users of the htpasswd file who may use the admin actions (/admin/...): inspect,
    # refresh and forget cached images. Empty: the admin endpoints do not exist.
    admins: CommaList = []


class AccessSettings(Section):
    allow: CommaList = []  # client networks (CIDR) allowed at all; empty: every address
    trusted_proxies: CommaList = []  # peers whose X-Forwarded-For is believed (CIDR)


class LimitSettings(Section):
    """Per-client and global limits; 0 turns one off."""

    requests_per_second: float = 0.0  # per client, sustained
    burst: int = 100  # per client, above the sustained rate
    downloads_per_client: int = 0  # concurrent blob downloads per client
    upstream_fetches: int = 64  # concurrent upstream downloads, all clients together
    repositories_per_client: int = 0  # distinct repositories per client per window
    window: Duration = 600.0
    ipv6_prefix: Annotated[int, Field(ge=1, le=128)] = 64  # IPv6 clients: one per network
    failed_logins: int = 10  # failed logins per client per window below (then 429)
    failed_logins_window: Duration = 60.0


class StorageDriverCheckSettings(Section):
    """registry:2's ``health.storagedriver``: here the store (a small file written and
    removed), the index (a trivial query) and the free disk, for readiness."""

    enabled: bool = True
    interval: Duration = 10.0
    threshold: Annotated[int, Field(ge=1)] = 3  # consecutive failures before unhealthy


class FileCheckSettings(Section):
    """``health.file``: unhealthy (not ready) while the file exists."""

    file: Path
    interval: Duration = 10.0


class HTTPCheckSettings(Section):
    """``health.http``: a URL that must answer ``statuscode`` (``/debug/health`` only)."""

    uri: CheckUrl
    headers: dict[str, list[str]] = {}
    statuscode: int = 200
    timeout: Duration = 5.0
    interval: Duration = 10.0
    threshold: Annotated[int, Field(ge=1)] = 1


class TCPCheckSettings(Section):
    """``health.tcp``: an address that must accept a connection (``/debug/health`` only)."""

    addr: str
    timeout: Duration = 5.0
    interval: Duration = 10.0
    threshold: Annotated[int, Field(ge=1)] = 1


def _check_url(value: object) -> object:
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid URL {redact_url(value)!r} (expected http(s)://host/path)")
    return value


CheckUrl = Annotated[str, BeforeValidator(_check_url)]
FileChecks = Annotated[list[FileCheckSettings], BeforeValidator(_yaml_list)]
HTTPChecks = Annotated[list[HTTPCheckSettings], BeforeValidator(_yaml_list)]
TCPChecks = Annotated[list[TCPCheckSettings], BeforeValidator(_yaml_list)]


class HealthSettings(Section):
    """registry:2's ``health`` section, and the readiness free-disk threshold."""

    storagedriver: StorageDriverCheckSettings = StorageDriverCheckSettings()
    file: FileChecks = []
    http: HTTPChecks = []
    tcp: TCPChecks = []
    # Not ready below this much free space on the cache's filesystem (0: no check);
    # unset: 100 MB, or half of storage.min_free when that is smaller.
    min_free: Size | None = None


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "warn", "error"] = "info"
    # registry:2's key: text lines, or one JSON object per line (logstash: the same with
    # logstash's @timestamp and @version).
    formatter: Literal["text", "json", "logstash"] = "text"


class MetricsSettings(Section):
    """The mirror's own: ``/metrics`` on the main port too (admission applies, no login)."""

    on_main_port: bool = True
