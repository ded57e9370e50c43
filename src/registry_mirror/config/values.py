"""Values as people write them in a setting: sizes, durations, comma lists, registry
and proxy URLs, and URLs as they are shown (never with their credentials). A parser
raises ``ValueError`` with a message for a person; the annotated types apply them when
the settings are validated."""

from __future__ import annotations

import re
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BeforeValidator, SecretStr

__all__ = [
    "CommaList",
    "ConfigError",
    "Duration",
    "ProxyUrl",
    "Size",
    "Url",
    "check_proxy",
    "host_port",
    "parse_duration",
    "parse_size",
    "redact_url",
]


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


def check_proxy(value: object) -> object:
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


ProxyUrl = Annotated[SecretStr, BeforeValidator(check_proxy)]
