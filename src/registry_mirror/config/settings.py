"""The one typed settings object, built once in ``main()`` by :func:`load_settings`: its
sections, the checks across them, and the views the rest of the mirror reads (the
storage root, the listening address, the upstreams in order, each one's forward proxy,
the warnings to log at start)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Final

from pydantic import Field, PrivateAttr, model_validator

from registry_mirror.config.proxy import OutboundProxy
from registry_mirror.config.sections import (
    AccessSettings,
    AuthSettings,
    HealthSettings,
    HTTPSettings,
    LimitSettings,
    LogSettings,
    MetricsSettings,
    ProxySettings,
    Section,
    StorageSettings,
    UpstreamCommon,
    UpstreamList,
)
from registry_mirror.config.values import ConfigError, redact_url

__all__ = ["DEFAULT_READY_FREE", "Settings"]

DEFAULT_READY_FREE: Final = 100 * 1000**2


class Settings(Section):
    """Everything the mirror can be told. Built by :func:`load_settings`."""

    http: HTTPSettings = HTTPSettings()
    proxy: ProxySettings = ProxySettings()
    upstreams: UpstreamList = Field(default_factory=list)
    storage: StorageSettings = StorageSettings()
    auth: AuthSettings = AuthSettings()
    access: AccessSettings = AccessSettings()
    limits: LimitSettings = LimitSettings()
    log: LogSettings = LogSettings()
    health: HealthSettings = HealthSettings()
    metrics: MetricsSettings = MetricsSettings()
    # HTTP_PROXY, HTTPS_PROXY, NO_PROXY from the environment (see outbound_proxy).
    _proxy_env: dict[str, str] = PrivateAttr(default_factory=dict)
    # Kubernetes service-link variables seen in the environment and ignored.
    _service_links: list[str] = PrivateAttr(default_factory=list)

    @property
    def service_links(self) -> list[str]:
        return list(self._service_links)

    @model_validator(mode="after")
    def _checks(self) -> Settings:
        tls = self.http.tls
        if (tls.certificate is None) != (tls.key is None):
            raise ValueError("http.tls: give both certificate and key")
        for network in [*self.access.allow, *self.access.trusted_proxies]:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"access: invalid network {network!r} (CIDR)") from None
        if not self.http.debug.prometheus.path.startswith("/"):
            raise ValueError("http.debug.prometheus.path: a path starting with /")
        if self.auth.anonymous and self.auth.htpasswd.path is None:
            raise ValueError("auth.anonymous: only meaningful with auth.htpasswd.path")
        if self.auth.admins and self.auth.htpasswd.path is None:
            raise ValueError(
                "auth.admins: admins log in with the htpasswd file: set auth.htpasswd.path"
            )
        self._health_checks()
        return self._names_unique()

    def _health_checks(self) -> None:
        """Eviction keeps ``storage.min_free`` free, so the free space hovers just above
        it: a readiness threshold at or above it would take the mirror out of service
        whenever the cache is full and working as meant."""
        health, floor = self.health.min_free, self.storage.min_free
        if floor is not None and health is not None and health and health >= floor:
            raise ValueError(
                f"health.min_free ({health} bytes) must be below storage.min_free ({floor}"
                " bytes): eviction keeps storage.min_free free, readiness fails only"
                " when the disk fills beyond what eviction can keep up with"
            )
        for check in self.health.tcp:
            host, sep, port = check.addr.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"health.tcp: invalid address {check.addr!r} (HOST:PORT)")

    def _names_unique(self) -> Settings:
        """Each registry is configured once: two entries sharing a name (or a URL) would
        silently replace each other, the default's traffic then going out with the
        other entry's credentials and policy."""
        seen: dict[str, str] = {}
        for position, upstream in enumerate(self.all_upstreams()):
            where = "proxy" if position == 0 else f"upstreams[{position - 1}]"
            where += f" ({redact_url(upstream.base_url)})"
            for name in sorted(upstream.registry_names):
                if name in seen and seen[name] != where:
                    raise ValueError(
                        f"upstreams: {name!r} names both {seen[name]} and {where}: configure"
                        " each registry once, with its credentials and policy in one place"
                        " (proxy, the default, is Docker Hub unless proxy.remoteurl is set)"
                    )
                seen[name] = where
        return self

    @property
    def readiness_min_free(self) -> int:
        """The free space below which the mirror is not ready (0: not checked):
        ``health.min_free``, else 100 MB or half of ``storage.min_free`` if smaller."""
        if self.health.min_free is not None:
            return self.health.min_free
        default = DEFAULT_READY_FREE
        if self.storage.min_free is not None:
            default = min(default, self.storage.min_free // 2)
        return default

    def outbound_proxy(self, upstream: UpstreamCommon) -> OutboundProxy:
        """The forward proxy policy of one upstream: its ``proxy`` setting, else the
        environment's (read by :func:`load_settings`), ``NO_PROXY`` applied to both."""
        env = self._proxy_env
        return OutboundProxy(
            upstream.proxy.get_secret_value() if upstream.proxy is not None else None,
            env.get("HTTP_PROXY") or None,
            env.get("HTTPS_PROXY") or None,
            tuple(h.strip().lower() for h in env.get("NO_PROXY", "").split(",") if h.strip()),
        )

    def warnings(self) -> list[str]:
        """Settings that work but may surprise, for the server to log at start: a name
        without a dot in a path prefix hides the default registry's namespace of that
        name (with Docker Hub as the default, ``hub/x`` is then never Docker Hub's)."""
        default = self.proxy.registry_name
        found = []
        for upstream in self.all_upstreams():
            for name in sorted(upstream.registry_names):
                if "." in name or ":" in name or name == "localhost":
                    continue
                target = upstream.registry_name
                found.append(
                    f"alias {name!r} of {target} has no dot: /v2/{name}/x means {target}'s"
                    f" repository x, so {default}'s own repositories under {name}/ cannot be"
                    f" pulled through this mirror (a name with a dot, e.g. {name}.mirror,"
                    " hides nothing)"
                )
        return found

    def all_upstreams(self) -> list[UpstreamCommon]:
        """The default upstream (``proxy``) first, then the others."""
        return [self.proxy, *self.upstreams]

    @property
    def root(self) -> Path:
        """The storage root: configured, else registry:2's path for root, else the user cache."""
        configured = self.storage.filesystem.rootdirectory
        if configured is not None:
            return configured
        if os.geteuid() == 0:
            return Path("/var/lib/registry")
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache) / "registry-mirror"

    def listen(self) -> tuple[str, int]:
        """``http.addr`` as (host, port). ``:5000`` (host ``""``) and ``[::]:5000``
        (``"::"``) mean every interface, IPv4 and IPv6; ``0.0.0.0:5000`` IPv4 only."""
        return _host_port("http.addr", self.http.addr)

    def debug_listen(self) -> tuple[str, int] | None:
        """``http.debug.addr`` as (host, port) when the debug listener has something to
        serve (``http.debug.prometheus.enabled``), else None."""
        debug = self.http.debug
        if debug.addr is None or not debug.prometheus.enabled:
            return None
        return _host_port("http.debug.addr", debug.addr)


def _host_port(key: str, addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: invalid address {addr!r} (expected HOST:PORT)")
    return (host.strip("[]"), int(port))
