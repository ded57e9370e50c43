"""A real forward proxy (tinyproxy) on loopback, for the mirror's outbound proxy.

``tinyproxy -d -c conf`` in the foreground, listening on ``127.0.0.1:<free port>``, allowing
only 127.0.0.1, logging every request to a file::

    with Tinyproxy(tmp_path / "proxy", auth=("user", "secret")) as proxy:
        ... HTTP_PROXY=proxy.url_with_auth ...
        assert proxy.requested("/v2/library/app/manifests/1")
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .process import ServerError, ServerProcess, find_binary

__all__ = ["Tinyproxy", "TinyproxyError"]


class TinyproxyError(ServerError):
    """tinyproxy failed to start."""


class Tinyproxy(ServerProcess):
    name = "tinyproxy"
    error = TinyproxyError

    def __init__(self, workdir: Path, *, auth: tuple[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.auth = auth

    @property
    def url_with_auth(self) -> str:
        if self.auth is None:
            return self.url
        return f"http://{self.auth[0]}:{self.auth[1]}@127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tinyproxy.log"

    def config(self) -> str:
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Allow 127.0.0.1",
            "Timeout 60",
            "MaxClients 200",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            f'PidFile "{self.workdir / "tinyproxy.pid"}"',
            "DisableViaHeader Yes",
        ]
        if os.geteuid() == 0:
            lines += ["User root", "Group root"]
        if self.auth is not None:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        return "\n".join(lines) + "\n"

    def prepare(self) -> None:
        (self.workdir / "tinyproxy.conf").write_text(self.config())

    def command(self) -> list[str]:
        binary = find_binary("tinyproxy", "/usr/bin/tinyproxy")
        if binary is None:
            raise TinyproxyError("tinyproxy is not installed (make deps)")
        return [binary, "-d", "-c", str(self.workdir / "tinyproxy.conf")]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def requests(self) -> list[str]:
        """The request lines tinyproxy logged: ``GET http://127.0.0.1:5000/v2/… HTTP/1.1``."""
        return re.findall(r"Request \(file descriptor \d+\): (.+)", self.log())

    def requested(self, path: str) -> int:
        """How many logged requests have ``path`` in their target."""
        return sum(1 for line in self.requests() if path in line)
