"""Run the real distribution registry (``registry:2``; Debian's ``docker-registry``) for tests.

A :class:`RegistryProcess` runs ``docker-registry serve CONFIG`` on a free 127.0.0.1 port with
its storage, config and logs inside a given working directory.  It can act as a plain registry
(optionally with htpasswd basic auth) or as a registry:2 pull-through cache
(``proxy.remoteurl``).

The registry (distribution 2.8) writes one gorilla "combined" access-log line per request to
its *stdout*, e.g.::

    127.0.0.1 - - [28/Nov/2026:11:37:13 +0000] "GET /v2/_catalog?n=10 HTTP/1.1" 200 20 "" "ua"

and its logrus application log (``level=info msg="response completed" ...``) to *stderr*.
Both are redirected to files in the working directory; :meth:`RegistryProcess.requests`
parses the access log.

Usage::

    with RegistryProcess(tmp_path / "upstream") as upstream:
        ...
        upstream.clear_log()
        ...  # do something against upstream.url
        assert upstream.count("GET", r"^/v2/library/alpine/blobs/sha256:") == 2
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from .ports import free_port
from .service import Service

__all__ = [
    "PROBE_USER_AGENT",
    "REGISTRY_BINARY",
    "LoggedRequest",
    "RegistryError",
    "RegistryProcess",
    "deep_merge",
    "make_htpasswd_line",
    "parse_access_log_line",
    "registry_binary",
]

REGISTRY_BINARY = "docker-registry"

#: User-Agent of the helper's own readiness/sync probes; such lines are hidden from
#: :meth:`RegistryProcess.requests`.
PROBE_USER_AGENT = "registry-mirror-test-support/probe"

_SYNC_PARAM = "__registry_mirror_sync"

# gorilla/handlers CombinedLoggingHandler:
#   host - user [02/Jan/2006:15:04:05 -0700] "METHOD URI PROTO" status size "referer" "ua"
# Quotes and backslashes inside the quoted fields are backslash-escaped.
_LOG_RE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]*)\] "
    r'"(?P<method>\S+) (?P<uri>\S+) (?P<proto>[^"]*)" (?P<status>\d{3}) (?P<size>\d+|-)'
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<ua>(?:[^"\\]|\\.)*)")?\s*$'
)


class RegistryError(RuntimeError):
    """The registry process failed to start or died."""


class _PortInUse(RegistryError):
    pass


def registry_binary() -> str | None:
    """Path of the ``docker-registry`` executable, or None if it is not installed."""
    return shutil.which(REGISTRY_BINARY)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of ``base`` with ``override`` merged in recursively.

    Nested mappings are merged; any other value replaces the base value; a value of ``None``
    removes the key.
    """
    result: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def make_htpasswd_line(user: str, password: str) -> str:
    """Return a ``user:bcrypt-hash`` htpasswd line (what distribution's htpasswd auth wants).

    Uses the ``bcrypt`` module when importable, else the ``htpasswd`` tool (apache2-utils).
    The cost is the minimum (4) to keep per-request verification cheap.
    """
    if ":" in user:
        raise ValueError("htpasswd user names cannot contain ':'")
    try:
        import bcrypt  # noqa: PLC0415
    except ImportError:
        tool = shutil.which("htpasswd")
        if tool is None:
            raise RegistryError(
                "need the 'bcrypt' Python package or the 'htpasswd' tool to write an htpasswd file"
            ) from None
        out = subprocess.run(
            [tool, "-nbB", "-C", "4", user, password],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.strip().splitlines()[0]
    hashed: bytes = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return f"{user}:{hashed.decode()}"


@dataclass(frozen=True)
class LoggedRequest:
    """One request as seen in the registry's access log."""

    method: str
    path: str  # request path, without the query string (as sent, i.e. still percent-encoded)
    query: str  # raw query string without the '?', "" if none
    status: int
    size: int = 0  # response bytes written ('-' means 0)
    user: str = "-"  # basic-auth user name, '-' if none
    user_agent: str = ""
    remote: str = ""
    raw: str = ""


def _unescape(value: str | None) -> str:
    if not value:
        return ""
    return re.sub(r"\\(.)", r"\1", value)


def parse_access_log_line(line: str) -> LoggedRequest | None:
    """Parse one gorilla combined-format access-log line; None if it is not one."""
    m = _LOG_RE.match(line.rstrip("\r\n"))
    if m is None:
        return None
    uri = m["uri"]
    path, _, query = uri.partition("?")
    size = m["size"]
    return LoggedRequest(
        method=m["method"],
        path=path,
        query=query,
        status=int(m["status"]),
        size=0 if size == "-" else int(size),
        user=m["user"],
        user_agent=_unescape(m["ua"]),
        remote=m["remote"],
        raw=line.rstrip("\r\n"),
    )


class RegistryProcess(Service):
    """The real distribution registry as a subprocess listening on ``127.0.0.1:<free port>``.

    Files in ``workdir``: ``config.yml`` (written as JSON, which YAML accepts), ``data/`` (the
    filesystem storage), ``htpasswd`` (if ``htpasswd`` is given), ``stdout.log`` (access log)
    and ``stderr.log`` (application log).

    Args:
        workdir: directory for config, storage and logs (created if missing).
        proxy_remoteurl: make it a registry:2 pull-through cache of this upstream URL.
        proxy_username / proxy_password: upstream credentials for the proxy.
        htpasswd: ``(user, password)`` to require basic auth (htpasswd, bcrypt).
        extra_config: deep-merged into the generated config (``None`` values delete keys).
        port: fixed port instead of a free one.
        binary: registry executable (default: ``docker-registry`` on PATH).
    """

    def __init__(
        self,
        workdir: Path,
        proxy_remoteurl: str | None = None,
        *,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
        htpasswd: tuple[str, str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.proxy_remoteurl = proxy_remoteurl
        self.proxy_username = proxy_username
        self.proxy_password = proxy_password
        self.htpasswd = htpasswd
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self._fixed_port = port
        self._binary = binary
        self._port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._offset = 0
        self._secret = secrets.token_hex(16)

    # ------------------------------------------------------------------ paths & properties

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yml"

    @property
    def htpasswd_path(self) -> Path:
        return self.workdir / "htpasswd"

    @property
    def stdout_path(self) -> Path:
        """The access log (gorilla combined format)."""
        return self.workdir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        """The registry's logrus application log."""
        return self.workdir / "stderr.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RegistryError("registry not started")
        return self._port

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, e.g. for ``docker://HOST/repo:tag`` references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RegistryError("registry not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def auth(self) -> tuple[str, str] | None:
        """The basic-auth credentials clients need (the ``htpasswd`` argument)."""
        return self.htpasswd

    # ------------------------------------------------------------------ config

    def config(self) -> dict[str, Any]:
        """The configuration that :meth:`start` writes (for the current port)."""
        cfg: dict[str, Any] = {
            "version": "0.1",
            "log": {
                "level": "info",
                "formatter": "text",
                "accesslog": {"disabled": False},
            },
            "storage": {
                "filesystem": {"rootdirectory": str(self.data_dir)},
                "delete": {"enabled": True},
                "maintenance": {
                    "uploadpurging": {"enabled": False},
                    "readonly": {"enabled": False},
                },
                "redirect": {"disable": True},
            },
            "http": {
                "addr": f"127.0.0.1:{self.port}",
                "secret": self._secret,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.htpasswd is not None:
            cfg["auth"] = {
                "htpasswd": {"realm": "registry-mirror-test", "path": str(self.htpasswd_path)}
            }
        if self.proxy_remoteurl is not None:
            proxy: dict[str, Any] = {"remoteurl": self.proxy_remoteurl}
            if self.proxy_username is not None:
                proxy["username"] = self.proxy_username
            if self.proxy_password is not None:
                proxy["password"] = self.proxy_password
            cfg["proxy"] = proxy
        return deep_merge(cfg, self.extra_config)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 15.0) -> Self:
        """Start the registry; return once ``GET /v2/`` answers 200 or 401.

        Raises :class:`RegistryError` (with the tail of its stderr) if it exits or does not
        answer within ``timeout`` seconds.  Retries with another port if the chosen one is
        taken in the meantime.
        """
        if self.running:
            return self
        binary = self._binary or registry_binary()
        if binary is None:
            raise RegistryError(f"{REGISTRY_BINARY!r} is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.htpasswd is not None:
            user, password = self.htpasswd
            self.htpasswd_path.write_text(make_htpasswd_line(user, password) + "\n")

        attempts = 1 if self._fixed_port is not None else 5
        for attempt in range(attempts):
            self._port = self._fixed_port or free_port()
            self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
            err_offset = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
            self._stdout = self.stdout_path.open("ab")
            self._stderr = self.stderr_path.open("ab")
            self._proc = subprocess.Popen(
                [binary, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=self._stderr,
                cwd=self.workdir,
                env=_child_env(),
                start_new_session=True,
            )
            # Never leave a registry behind if the caller forgets stop() or crashes.
            weakref.finalize(self, _terminate, self._proc)
            try:
                self._wait_ready(timeout, err_offset)
            except _PortInUse:
                self.stop()
                if attempt + 1 == attempts:
                    raise
                continue
            except BaseException:
                self.stop()
                raise
            break
        self.clear_log()
        return self

    def _wait_ready(self, timeout: float, err_offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                tail = self.stderr_tail(since=err_offset)
                if "address already in use" in tail:
                    raise _PortInUse(f"port {self._port} in use")
                raise RegistryError(
                    f"{REGISTRY_BINARY} exited with status {rc} during startup; stderr:\n{tail}"
                )
            status = self._probe("/v2/", timeout=1.0)
            if status in (200, 401):
                return
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"{REGISTRY_BINARY} did not answer GET /v2/ within {timeout}s "
                    f"(last status {status}); stderr:\n{self.stderr_tail(since=err_offset)}"
                )
            time.sleep(0.02)

    def _probe(self, target: str, timeout: float = 5.0) -> int | None:
        """GET ``target`` with the probe User-Agent; the status, or None on connection error."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", target, headers={"User-Agent": PROBE_USER_AGENT})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except OSError:
            return None
        finally:
            conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the registry, wait up to ``timeout`` s, then SIGKILL.  Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=timeout)
        for f in (self._stdout, self._stderr):
            if f is not None:
                f.close()
        self._stdout = self._stderr = None

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        kind = f" proxy of {self.proxy_remoteurl}" if self.proxy_remoteurl else ""
        return f"<RegistryProcess {where}{kind} workdir={self.workdir}>"

    # ------------------------------------------------------------------ logs

    def stderr_tail(self, lines: int = 40, since: int = 0) -> str:
        """The last ``lines`` lines of the registry's stderr (from byte offset ``since``)."""
        try:
            with self.stderr_path.open("rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def sync(self, timeout: float = 5.0) -> None:
        """Make sure the access log holds every request answered so far.

        Sends a marker request and waits for its log line (the access-log line of a request
        is written when its handler returns).  No-op if the registry is not running.
        """
        if not self.running:
            return
        token = secrets.token_hex(8)
        needle = f"{_SYNC_PARAM}={token}".encode()
        self._probe(f"/v2/?{_SYNC_PARAM}={token}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.stdout_path.open("rb") as f:
                f.seek(self._offset)
                if needle in f.read():
                    return
            time.sleep(0.005)
        raise RegistryError(f"access-log marker did not appear within {timeout}s")

    def wait_idle(self, quiet: float = 0.5, timeout: float = 30.0) -> None:
        """Wait until the access log has not grown for ``quiet`` seconds.

        Useful for background work such as a registry:2 proxy's asynchronous upstream fetches.
        """
        deadline = time.monotonic() + timeout
        last_size = -1
        last_change = time.monotonic()
        while True:
            size = self.stdout_path.stat().st_size if self.stdout_path.exists() else 0
            now = time.monotonic()
            if size != last_size:
                last_size, last_change = size, now
            elif now - last_change >= quiet:
                return
            if now > deadline:
                raise RegistryError(f"access log still growing after {timeout}s")
            time.sleep(0.02)

    def _read_complete(self) -> tuple[bytes, int]:
        """Bytes of complete lines after the offset, and the offset just past them."""
        try:
            with self.stdout_path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return b"", self._offset
        end = data.rfind(b"\n") + 1
        return data[:end], self._offset + end

    def requests(self, *, sync: bool = True) -> list[LoggedRequest]:
        """Requests logged since start / the last :meth:`clear_log`, oldest first.

        The helper's own probe requests are left out.  With ``sync`` (default) the log is
        first synchronised (see :meth:`sync`) so that every answered request is included.
        """
        if sync:
            self.sync()
        data, _ = self._read_complete()
        out: list[LoggedRequest] = []
        for line in data.decode(errors="replace").splitlines():
            req = parse_access_log_line(line)
            if req is not None and req.user_agent != PROBE_USER_AGENT:
                out.append(req)
        return out

    def count(
        self,
        method: str | None,
        path_regex: str,
        *,
        status: int | None = None,
        sync: bool = True,
    ) -> int:
        """Number of logged requests with this method (None: any) whose path matches.

        ``path_regex`` uses :func:`re.search` on the path (no query): anchor it with ``^``/``$``
        for exact matches.  ``status`` optionally filters on the response status.
        """
        pattern = re.compile(path_regex)
        return sum(
            1
            for r in self.requests(sync=sync)
            if (method is None or r.method == method)
            and (status is None or r.status == status)
            and pattern.search(r.path)
        )

    def clear_log(self, *, sync: bool = True) -> None:
        """Forget everything logged so far: later reads only see new requests."""
        if sync:
            self.sync()
        _, self._offset = self._read_complete()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # distribution reads REGISTRY_* variables as config overrides: keep the config file in charge.
    for key in list(env):
        if key.startswith("REGISTRY_"):
            del env[key]
    # The proxy must reach 127.0.0.1 directly.
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(key, None)
    return env
