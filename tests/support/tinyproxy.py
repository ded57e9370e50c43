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
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from .ports import free_port

__all__ = ["Tinyproxy", "TinyproxyError", "tinyproxy_binary"]


class TinyproxyError(RuntimeError):
    """tinyproxy failed to start."""


def tinyproxy_binary() -> str | None:
    return shutil.which("tinyproxy") or (
        "/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None
    )


class Tinyproxy:
    def __init__(self, workdir: Path, *, auth: tuple[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.auth = auth
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

    def start(self, timeout: float = 10.0) -> Self:
        binary = tinyproxy_binary()
        if binary is None:
            raise TinyproxyError("tinyproxy is not installed (make deps)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text(self.config())
        self._proc = subprocess.Popen(
            [binary, "-d", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TinyproxyError(
                    f"tinyproxy exited with {self._proc.returncode}:\n{self.log()}"
                )
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise TinyproxyError(f"tinyproxy did not listen within {timeout}s:\n{self.log()}")

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

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
