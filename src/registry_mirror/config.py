"""The one typed settings object, built once in ``main()``.

Sources, strongest first: command-line flags, ``REGISTRY_MIRROR_*`` environment
variables, registry:2's ``REGISTRY_*`` environment variables, the YAML config
file (registry:2's keys), defaults. Every leaf setting ``a.b_c`` has the flag
``--a-b-c`` and the variable ``REGISTRY_MIRROR_A_B_C``; registry:2's variable
for the same key is ``REGISTRY_A_B_C``.

An unknown key, a bad value or a missing file raises :class:`ConfigError` with
one line naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)

__all__ = [
    "COMPAT_KEYS",
    "ConfigError",
    "OutboundProxy",
    "Settings",
    "leaf_paths",
    "load_settings",
    "parse_duration",
    "parse_size",
    "redact_url",
]

ENV_PREFIX: Final = "REGISTRY_MIRROR_"
REGISTRY2_ENV_PREFIX: Final = "REGISTRY_"
DOCKER_HUB: Final = "https://registry-1.docker.io"
DOCKER_HUB_HOSTS: Final = frozenset(
    {"registry-1.docker.io", "docker.io", "index.docker.io", "registry.hub.docker.com"}
)

# registry:2 keys accepted in a config file for drop-in compatibility that have no
# effect on a pull-through mirror. Anything else unknown is an error.
COMPAT_KEYS: Final = frozenset(
    {
        "version",
        "log.fields",
        "log.formatter",
        "log.hooks",
        "log.reportcaller",
        "log.accesslog",
        "loglevel",
        "storage.cache",
        "storage.delete",
        "storage.maintenance",
        "storage.redirect",
        "storage.tag",
        "http.headers",
        "http.secret",
        "http.debug",
        "http.host",
        "http.relativeurls",
        "http.http2",
        "http.draintimeout",
        "http.prefix",
        "health",
        "notifications",
        "redis",
        "validation",
        "compatibility",
        "reporting",
        "middleware",
        "proxy.ttl",
    }
)


class ConfigError(Exception):
    """A configuration problem, described in one line for a person."""


_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(value: object) -> int:
    """``"50GiB"``, ``"500MB"``, ``"1024"`` or an int → bytes."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r} (examples: 500MiB, 50GiB, 1TB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: object) -> float:
    """``"30s"``, ``"5m"``, ``"1h30m"``, ``"30d"`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}")
        return float(value)
    text = str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        raise ValueError(f"invalid duration {value!r} (examples: 30s, 5m, 1h30m, 30d)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[list[str], BeforeValidator(_comma_list)]
Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSSettings(_Section):
    certificate: Path | None = None
    key: Path | None = None


class HTTPSettings(_Section):
    addr: str = ":5000"
    tls: TLSSettings = TLSSettings()
    idle_timeout: Duration = 75.0  # a connection must send a whole request within this
    write_timeout: Duration = 300.0  # a client that takes no response bytes this long is dropped
    max_headers: int = 100
    max_header_size: Size = 8190


def redact_url(url: str, *, mark: bool = False) -> str:
    """``url`` without its user info (``http://bob:pw@host`` → ``http://host``, or
    ``http://***@host`` with ``mark``, for a log line that shows credentials are given):
    for every place a URL is printed, logged or turned into a name."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}" if mark else host).geturl()


def host_port(url: str) -> str:
    """``host[:port]`` of a URL, lower case, never its user info."""
    return urlsplit(url).netloc.rpartition("@")[2].lower()


def _check_url(value: object) -> object:
    if isinstance(value, str):
        parts = urlsplit(value)
        shown = redact_url(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid URL {shown!r} (expected http(s)://host[:port])")
        if "@" in parts.netloc:
            # It would become the registry's name: in logs, ls, the index, error answers.
            raise ValueError(
                f"credentials in the URL {shown!r} are refused (they would show in names"
                " and logs): give them as proxy.username / proxy.password (or the"
                " upstream's username / password)"
            )
        if parts.path.strip("/") or parts.query:
            raise ValueError(f"URL {shown!r} must not have a path (the /v2/ API is implied)")
    return value


Url = Annotated[str, BeforeValidator(_check_url)]


def _check_proxy(value: object) -> object:
    """``http://[user:password@]host:port``, or ``none`` (never a proxy). The value is never
    echoed in the error: it may carry a password."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        value = value.strip()
        if value.lower() == "none":
            return "none"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("invalid proxy URL (expected http://host:port or none)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("invalid proxy URL (expected http://host:port or none)")
        if parts.path.strip("/") or parts.query:
            raise ValueError("a proxy URL has no path")
    return value


ProxyUrl = Annotated[SecretStr, BeforeValidator(_check_proxy)]
#: The environment variables of an outbound proxy, as curl, Go and registry:2 read them.
PROXY_ENV: Final = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


@dataclass(frozen=True, slots=True)
class OutboundProxy:
    """Which forward proxy (if any) a request to a URL goes through, for one upstream.

    ``explicit``: the upstream's ``proxy`` setting (``None``: unset, ``"none"``: never);
    else ``HTTPS_PROXY``/``HTTP_PROXY`` by the URL's scheme. ``NO_PROXY`` exempts hosts in
    both cases: names (a suffix on a dot boundary, a leading dot optional), addresses,
    CIDR networks, each optionally with ``:port``; ``*`` exempts every host.
    """

    explicit: str | None = dataclasses.field(default=None, repr=False)
    http: str | None = dataclasses.field(default=None, repr=False)
    https: str | None = dataclasses.field(default=None, repr=False)
    no_proxy: tuple[str, ...] = ()

    def for_url(self, scheme: str, host: str, port: int | None) -> str | None:
        if self.explicit == "none":
            return None
        chosen = self.explicit or (self.https if scheme == "https" else self.http)
        if not chosen or self._exempt(host.lower().strip("[]"), port):
            return None
        return chosen

    def _exempt(self, host: str, port: int | None) -> bool:
        for entry in self.no_proxy:
            if entry == "*":
                return True
            name, entry_port = entry, None
            if entry.startswith("["):  # [::1]:5000
                name, _, rest = entry[1:].partition("]")
                entry_port = rest[1:] or None
            elif entry.count(":") == 1:
                name, _, entry_port = entry.partition(":")
            if entry_port is not None and (not entry_port.isdigit() or int(entry_port) != port):
                continue
            try:
                network = ipaddress.ip_network(name, strict=False)
            except ValueError:
                network = None
            if network is not None:
                try:
                    if ipaddress.ip_address(host) in network:
                        return True
                except ValueError:
                    pass
                continue
            name = name.lstrip(".").removeprefix("*.")
            if name and (host == name or host.endswith("." + name)):
                return True
        return False


class _UpstreamCommon(_Section):
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


class ProxySettings(_UpstreamCommon):
    """registry:2's ``proxy`` section: the default upstream."""

    remoteurl: Url = DOCKER_HUB
    name: str | None = None

    @property
    def base_url(self) -> str:
        return self.remoteurl

    @property
    def registry_name(self) -> str:
        return self.name.lower() if self.name else super().registry_name


class UpstreamSettings(_UpstreamCommon):
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
    """``upstreams`` from a flag or variable: a YAML/JSON list of mappings."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError("expected a YAML or JSON list of upstreams") from None
    return value


UpstreamList = Annotated[list[UpstreamSettings], BeforeValidator(_yaml_list)]


class FilesystemSettings(_Section):
    rootdirectory: Path | None = None


class StorageSettings(_Section):
    filesystem: FilesystemSettings = FilesystemSettings()
    quota: Size | None = None  # bytes on disk for the cache; LRU eviction above it
    min_free: Size | None = None  # keep this much of the filesystem free
    max_idle: Duration | None = None  # evict content not served for this long


class HtpasswdSettings(_Section):
    path: Path | None = None
    realm: str = "registry-mirror"


class AuthSettings(_Section):
    """Who may pull (registry:2's ``auth.htpasswd`` keys, plus an anonymous read policy)."""

    htpasswd: HtpasswdSettings = HtpasswdSettings()
    # Repositories readable without logging in when htpasswd is set, as globs over
    # registry/repository: "docker.io/*", "ghcr.io/public-org/*".
    anonymous: CommaList = []


class AccessSettings(_Section):
    allow: CommaList = []  # client networks (CIDR) allowed at all; empty: every address
    trusted_proxies: CommaList = []  # peers whose X-Forwarded-For is believed (CIDR)


class LimitSettings(_Section):
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


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "warn", "error"] = "info"


class Settings(_Section):
    """Everything the mirror can be told. Built by :func:`load_settings`."""

    http: HTTPSettings = HTTPSettings()
    proxy: ProxySettings = ProxySettings()
    upstreams: UpstreamList = []
    storage: StorageSettings = StorageSettings()
    auth: AuthSettings = AuthSettings()
    access: AccessSettings = AccessSettings()
    limits: LimitSettings = LimitSettings()
    log: LogSettings = LogSettings()
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
        if self.auth.anonymous and self.auth.htpasswd.path is None:
            raise ValueError("auth.anonymous: only meaningful with auth.htpasswd.path")
        return self._names_unique()

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

    def outbound_proxy(self, upstream: _UpstreamCommon) -> OutboundProxy:
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

    def all_upstreams(self) -> list[_UpstreamCommon]:
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
        host, sep, port = self.http.addr.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"http.addr: invalid address {self.http.addr!r} (expected HOST:PORT)")
        return (host.strip("[]"), int(port))


def leaf_paths(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[str]:
    """Every settable key, dotted: ``http.addr``, ``storage.filesystem.rootdirectory``…"""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaf_paths(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def env_name(path: str, prefix: str = ENV_PREFIX) -> str:
    return prefix + path.replace(".", "_").upper()


def flag_name(path: str) -> str:
    return "--" + path.replace(".", "-").replace("_", "-")


_SERVICE_LINK: Final = re.compile(
    r"(?:[A-Z0-9_]+_)?(?P<kind>SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT"
    r"|PORT_\d{1,5}_(?:TCP|UDP|SCTP)(?P<part>_PROTO|_PORT|_ADDR)?)"
)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_service_link(name: str, value: str) -> bool:
    """A variable Kubernetes puts into every pod for a Service whose name starts with
    ``registry-mirror`` (``REGISTRY_MIRROR_SERVICE_HOST=10.0.0.7``,
    ``REGISTRY_MIRROR_PORT=tcp://10.0.0.7:5000``, ``…_PORT_5000_TCP_ADDR``, …): the exact
    shapes, names and values, so that a mistyped setting is still refused."""
    match = _SERVICE_LINK.fullmatch(name.removeprefix(ENV_PREFIX))
    if not name.startswith(ENV_PREFIX) or match is None:
        return False
    kind, part = match["kind"], match["part"]
    if kind == "SERVICE_HOST" or part == "_ADDR":
        return _is_ip(value)
    if kind.startswith("SERVICE_PORT") or part == "_PORT":
        return value.isdigit()
    if part == "_PROTO":
        return value in ("tcp", "udp", "sctp")
    address = re.fullmatch(r"(?:tcp|udp|sctp)://\[?([0-9a-fA-F.:]+?)\]?:(\d{1,5})", value)
    return address is not None and _is_ip(address[1])


def load_settings(
    *,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> tuple[Settings, list[str]]:
    """Layer the sources and validate once.

    ``flags`` maps dotted keys to values given on the command line (only those
    given). Returns the settings and the registry:2 keys that were accepted
    but have no effect, for the caller to log.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    ignored: list[str] = []
    service_links: list[str] = []
    known = set(leaf_paths())

    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        for path, value in _flatten(_read_yaml(config_file)):
            if path in known:
                merged[path] = value
                sources[path] = str(config_file)
            elif _is_compat(path):
                ignored.append(path)
            else:
                raise ConfigError(f"{config_file}: unknown key {path!r}")

    for path in known:
        name = env_name(path, REGISTRY2_ENV_PREFIX)
        if name in environ and not name.startswith(ENV_PREFIX):
            merged[path] = environ[name]
            sources[path] = name
    env_known = {env_name(path): path for path in known}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        if name not in env_known:
            if is_service_link(name, value):
                service_links.append(name)
                continue
            raise ConfigError(f"unknown environment variable {name}")
        merged[env_known[name]] = value
        sources[env_known[name]] = name

    for path, value in (flags or {}).items():
        if path not in known:
            raise ConfigError(f"unknown setting {path!r}")
        merged[path] = value
        sources[path] = flag_name(path)

    try:
        settings = Settings.model_validate(_unflatten(merged))
    except ValidationError as exc:
        error = exc.errors()[0]
        path = ".".join(str(p) for p in error["loc"]) or "config"
        where = f" (from {sources[path]})" if path in sources else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{path}: {message}{where}") from None
    settings.listen()
    settings._proxy_env = _proxy_environment(environ)
    settings._service_links = sorted(service_links)
    return settings, ignored


def _proxy_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``, upper case winning over lower case
    (curl reads only ``http_proxy`` lower case; Go reads both)."""
    found: dict[str, str] = {}
    for name in PROXY_ENV:
        value = environ.get(name) or environ.get(name.lower())
        if not value or not value.strip():
            continue
        value = value.strip()
        if name != "NO_PROXY":
            if "://" not in value:
                value = "http://" + value  # as Go and curl read proxy:3128
            try:
                if _check_proxy(value) == "none":
                    continue
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        found[name] = value
    return found


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def _is_compat(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in COMPAT_KEYS)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not _is_compat(path):
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
