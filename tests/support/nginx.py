"""A real nginx reverse proxy on loopback, in front of test servers.

One nginx process (``-p`` and ``-c`` in a work directory, ``daemon off``, its pid, error
log and temporary files there) with one ``server`` per backend, each listening on
``127.0.0.1:<free port>`` and proxying everything to its backend::

    with Nginx(tmp_path / "nginx", [registry.url, tokens_url], http=GZIP_JSON) as nginx:
        registry_via_nginx, tokens_via_nginx = nginx.urls

``http`` is extra configuration for the ``http`` block (e.g. :data:`GZIP_JSON`), ``server``
extra configuration for every ``server`` block.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from .ports import free_port

__all__ = ["GZIP_JSON", "Nginx", "NginxError", "nginx_binary"]

#: Compress every answer (JSON, every manifest type, blobs) to a client that accepts gzip,
#: whatever the backend said: a reverse proxy set up for web APIs, at its most eager.
#: (Listing the manifest types one by one fails: nginx's type hash holds short names only.)
GZIP_JSON = """
gzip on;
gzip_proxied any;
gzip_min_length 1;
gzip_types *;
"""


class NginxError(RuntimeError):
    """nginx failed to start."""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


class Nginx:
    def __init__(
        self,
        workdir: Path,
        backends: Sequence[str],
        *,
        http: str = "",
        server: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.backends = [b.rstrip("/") for b in backends]
        self.http = http
        self.server = server
        self.ports = [free_port() for _ in self.backends]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def config(self) -> str:
        servers = "\n".join(
            f"""
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location / {{
            proxy_pass {backend};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
        }}
        {self.server}
    }}"""
            for port, backend in zip(self.ports, self.backends, strict=True)
        )
        temp = self.workdir / "temp"
        user = "user root root;" if os.geteuid() == 0 else ""
        return f"""
{user}
daemon off;
master_process on;
worker_processes 1;
pid {self.workdir / "nginx.pid"};
error_log {self.error_log} info;
events {{ worker_connections 512; }}
http {{
    log_format mirror '$request_method "$request_uri" $status "$sent_http_content_encoding"';
    access_log {self.access_log} mirror;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    {self.http}
    {servers}
}}
"""

    def start(self, timeout: float = 10.0) -> Self:
        binary = nginx_binary()
        if binary is None:
            raise NginxError("nginx is not installed (make deps)")
        (self.workdir / "temp").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        self._proc = subprocess.Popen(
            [binary, "-p", str(self.workdir), "-c", str(conf), "-e", str(self.error_log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NginxError(f"nginx exited with {self._proc.returncode}:\n{self.errors()}")
            if all(_listening(port) for port in self.ports):
                return self
            time.sleep(0.05)
        self.stop()
        raise NginxError(f"nginx did not listen within {timeout}s:\n{self.errors()}")

    def requests(self) -> list[tuple[str, str, int, str]]:
        """(method, path with query, status, Content-Encoding sent or "") per request."""
        try:
            text = self.access_log.read_text(errors="replace")
        except OSError:
            return []
        found = re.findall(r'^(\S+) "([^"]*)" (\d+) "([^"]*)"$', text, re.MULTILINE)
        return [(m, p, int(s), "" if c == "-" else c) for m, p, s, c in found]

    def errors(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

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


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
