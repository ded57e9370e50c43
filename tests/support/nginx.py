"""A real nginx reverse proxy on loopback, in front of test servers (upstream registries
and their token services, or the mirror itself).

One nginx process (``-p`` and ``-c`` in a work directory, ``daemon off``, its pid, logs
and temporary files there) with one ``server`` per backend, each listening on
``127.0.0.1:<free port>`` and proxying everything to its backend::

    with Nginx(tmp_path / "nginx", [registry.url, tokens_url], http=GZIP_JSON) as nginx:
        registry_via_nginx, tokens_via_nginx = nginx.urls

    with Nginx(tmp_path / "nginx", [mirror.url], location=forwarded_for(APPEND)) as nginx:
        ...  # clients reach the mirror through nginx, as behind a reverse proxy

``http`` is extra configuration for the ``http`` block (e.g. :data:`GZIP_JSON`),
``server`` for every ``server`` block, ``location`` for every ``location`` block (where
``proxy_set_header`` must go: the location sets ``Host``, which hides any of the levels
above).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .ports import free_port
from .process import ServerError, ServerProcess, find_binary

__all__ = ["APPEND", "GZIP_JSON", "REPLACE", "Nginx", "NginxError", "forwarded_for"]

#: Compress every answer (JSON, every manifest type, blobs) to a client that accepts gzip,
#: whatever the backend said: a reverse proxy set up for web APIs, at its most eager.
#: (Listing the manifest types one by one fails: nginx's type hash holds short names only.)
GZIP_JSON = """
gzip on;
gzip_proxied any;
gzip_min_length 1;
gzip_types *;
"""

APPEND = "$proxy_add_x_forwarded_for"  # the client's header, then the peer nginx saw
REPLACE = "$remote_addr"  # only the peer nginx saw


def forwarded_for(value: str) -> str:
    """``location`` configuration setting ``X-Forwarded-For`` (:data:`APPEND`,
    :data:`REPLACE`)."""
    return f"proxy_set_header X-Forwarded-For {value};"


class NginxError(ServerError):
    """nginx failed to start."""


class Nginx(ServerProcess):
    name = "nginx"
    error = NginxError

    def __init__(
        self,
        workdir: Path,
        backends: Sequence[str],
        *,
        http: str = "",
        server: str = "",
        location: str = "",
    ) -> None:
        super().__init__(workdir)
        self.backends = [b.rstrip("/") for b in backends]
        self.http = http
        self.server = server
        self.location = location
        self._ports = [self.port] + [free_port() for _ in self.backends[1:]]

    def ports(self) -> list[int]:
        return list(self._ports)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self._ports]

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
            {self.location}
        }}
        {self.server}
    }}"""
            for port, backend in zip(self._ports, self.backends, strict=True)
        )
        temp = self.workdir / "temp"
        # As root the workers would become "nobody", who cannot write the paths here.
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

    def prepare(self) -> None:
        (self.workdir / "temp").mkdir(parents=True, exist_ok=True)
        (self.workdir / "nginx.conf").write_text(self.config())

    def command(self) -> list[str]:
        binary = find_binary("nginx", "/usr/sbin/nginx")
        if binary is None:
            raise NginxError("nginx is not installed (make deps)")
        conf = self.workdir / "nginx.conf"
        return [binary, "-p", str(self.workdir), "-c", str(conf), "-e", str(self.error_log)]

    def requests(self) -> list[tuple[str, str, int, str]]:
        """(method, path with query, status, Content-Encoding sent or "") per request."""
        try:
            text = self.access_log.read_text(errors="replace")
        except OSError:
            return []
        found = re.findall(r'^(\S+) "([^"]*)" (\d+) "([^"]*)"$', text, re.MULTILINE)
        return [(m, p, int(s), "" if c == "-" else c) for m, p, s, c in found]

    def log(self) -> str:
        """nginx's own messages (start-up errors, proxy errors)."""
        try:
            return self.error_log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
