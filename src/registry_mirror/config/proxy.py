"""The forward proxy an upstream's requests go through: the upstream's own ``proxy``
setting, else the environment's ``HTTP_PROXY`` / ``HTTPS_PROXY``, ``NO_PROXY`` exempting
hosts from either."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from registry_mirror.config.values import ConfigError, check_proxy

__all__ = ["PROXY_ENV", "OutboundProxy", "proxy_environment"]

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


def proxy_environment(environ: Mapping[str, str]) -> dict[str, str]:
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
                if check_proxy(value) == "none":
                    continue
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        found[name] = value
    return found
