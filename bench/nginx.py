"""nginx serving files with sendfile: what a cache hit of the mirror is held against."""

from __future__ import annotations

from pathlib import Path

from tests.support.nginx import NginxError
from tests.support.process import ServerProcess, find_binary

__all__ = ["StaticNginx", "nginx_binary"]


def nginx_binary() -> str | None:
    return find_binary("nginx", "/usr/sbin/nginx")


class StaticNginx(ServerProcess):
    """One nginx process (no master, no workers) serving the files below ``root``.

    ``daemon off``, ``sendfile on``, no access log; its configuration, pid, error log and
    temporary directories live in ``workdir``; it listens on 127.0.0.1 on a free port.
    """

    name = "nginx"
    error = NginxError

    def __init__(self, workdir: Path, root: Path) -> None:
        super().__init__(workdir)
        self.root = root

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise NginxError("nginx is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    def config(self) -> str:
        temp = self.workdir / "temp"
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {self.workdir / "nginx.pid"};
error_log {self.error_log} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{ }}
    }}
}}
"""

    def prepare(self) -> None:
        (self.workdir / "temp").mkdir(parents=True, exist_ok=True)
        (self.workdir / "nginx.conf").write_text(self.config())

    def command(self) -> list[str]:
        binary = nginx_binary()
        if binary is None:
            raise NginxError("nginx is not installed (apt-get install -y nginx)")
        conf = self.workdir / "nginx.conf"
        return [binary, "-p", f"{self.workdir}/", "-c", str(conf), "-e", str(self.error_log)]

    def log(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stderr_tail(self, lines: int) -> str:
        return "\n".join(self.log().splitlines()[-lines:])
