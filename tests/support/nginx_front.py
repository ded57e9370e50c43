"""A real nginx reverse proxy in front of the mirror, for the client side of the access
policy (``X-Forwarded-For``, the client address in the access log).

nginx runs in the foreground (``daemon off``) with everything it writes (pid, logs,
temporary files) under its own directory and listens on ``127.0.0.1:<free port>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from .ports import free_port

__all__ = ["APPEND", "REPLACE", "NginxFront", "nginx_binary"]

APPEND = "$proxy_add_x_forwarded_for"  # the client's header, then the peer nginx saw
REPLACE = "$remote_addr"  # only the peer nginx saw


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


class NginxFront:
    """nginx proxying ``127.0.0.1:<port>`` to ``backend`` (``host:port``), setting
    ``X-Forwarded-For`` to ``forwarded_for`` (:data:`APPEND` or :data:`REPLACE`)."""

    def __init__(self, directory: Path, backend: str, *, forwarded_for: str = APPEND) -> None:
        self.directory = Path(directory)
        self.backend = backend
        self.forwarded_for = forwarded_for
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        d = self.directory
        # As root the workers would become "nobody", who cannot write the temp paths here.
        user = "user root;\n" if os.geteuid() == 0 else ""
        temps = "".join(
            f"  {kind}_temp_path {d / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"{user}worker_processes 1;\n"
            f"pid {d / 'nginx.pid'};\n"
            f"error_log {d / 'error.log'} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {d / 'access.log'};\n"
            f"{temps}"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    location / {\n"
            f"      proxy_pass http://{self.backend};\n"
            "      proxy_http_version 1.1;\n"
            '      proxy_set_header Connection "";\n'
            "      proxy_set_header Host $http_host;\n"
            f"      proxy_set_header X-Forwarded-For {self.forwarded_for};\n"
            "      proxy_buffering off;\n"
            "    }\n"
            "  }\n"
            "}\n"
        )

    def start(self, timeout: float = 10.0) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config())
        error_log = self.directory / "error.log"
        command = [nginx_binary(), "-p", str(self.directory), "-e", str(error_log)]
        command += ["-c", str(conf), "-g", "daemon off;"]
        with open(self.directory / "stderr.log", "ab") as stderr:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self._proc.returncode}: {self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {timeout}s")

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()  # SIGTERM: fast shutdown
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    def log(self) -> str:
        """nginx's own messages (start-up errors, proxy errors)."""
        texts = []
        for name in ("stderr.log", "error.log"):
            with contextlib.suppress(OSError):
                texts.append((self.directory / name).read_text(errors="replace"))
        return "\n".join(texts)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
