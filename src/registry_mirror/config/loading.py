"""Building the settings from their sources, strongest first: command-line flags,
``REGISTRY_MIRROR_*`` environment variables, registry:2's ``REGISTRY_*`` environment
variables, the YAML config file (registry:2's keys), defaults. Every leaf setting
``a.b_c`` has the flag ``--a-b-c`` and the variable ``REGISTRY_MIRROR_A_B_C``; registry:2's
variable for the same key is ``REGISTRY_A_B_C``.

An unknown key, a bad value or a missing file raises :class:`ConfigError` with one line
naming the key and where it came from.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

from registry_mirror.config.proxy import proxy_environment
from registry_mirror.config.settings import Settings
from registry_mirror.config.values import ConfigError

__all__ = [
    "COMPAT_KEYS",
    "ENV_PREFIX",
    "REGISTRY2_ENV_PREFIX",
    "env_name",
    "flag_name",
    "is_service_link",
    "leaf_paths",
    "load_settings",
]

ENV_PREFIX: Final = "REGISTRY_MIRROR_"
REGISTRY2_ENV_PREFIX: Final = "REGISTRY_"

# registry:2 keys accepted in a config file for drop-in compatibility that have no
# effect on a pull-through mirror. Anything else unknown is an error.
COMPAT_KEYS: Final = frozenset(
    {
        "version",
        "log.fields",
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
        "http.host",
        "http.relativeurls",
        "http.http2",
        "http.prefix",
        "notifications",
        "redis",
        "validation",
        "compatibility",
        "reporting",
        "middleware",
        "proxy.ttl",
    }
)


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
    settings.debug_listen()
    settings._proxy_env = proxy_environment(environ)
    settings._service_links = sorted(service_links)
    return settings, ignored


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
