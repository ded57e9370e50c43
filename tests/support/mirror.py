"""Run the mirror itself (``registry-mirror serve``) as a real process for tests."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Self

from .ports import free_port
from .service import Service

__all__ = [
    "LOG_ALARMS",
    "STALE",
    "MirrorError",
    "MirrorProcess",
    "assert_log_quiet",
    "mirror_binary",
    "mirror_command",
]

_PROXY_VARIABLES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"})


#: The ``Warning`` of an answer from the cache because upstream could not be asked.
STALE = '110 - "served from cache: upstream unavailable"'


#: What never belongs in the mirror's log, whatever a test did to it: an exception that
#: reached the error middleware (logged with its traceback as an internal error), or a task
#: whose exception nobody retrieved.
LOG_ALARMS = ("Traceback", "internal error", "Task exception was never retrieved")


def assert_log_quiet(log: str, *, tail: int = 5000) -> None:
    """Fail, showing the end of ``log``, if it holds one of :data:`LOG_ALARMS`."""
    for alarm in LOG_ALARMS:
        assert alarm not in log, f"{alarm!r} in the mirror's log:\n{log[-tail:]}"


class MirrorError(RuntimeError):
    """The mirror failed to start or died."""


def mirror_binary() -> str:
    return str(Path(sys.executable).parent / "registry-mirror")


def mirror_command(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``registry-mirror ARGS`` (an operator command: ``ls``, ``verify``, ``prune``...) run to
    its end without the registry settings of the environment; the caller judges it."""
    return subprocess.run(
        [mirror_binary(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL if stdin is None else None,
        input=stdin,
        env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
    )


class MirrorProcess(Service):
    """``registry-mirror serve`` on ``127.0.0.1:<free port>`` with its cache in ``root``.

    ``args`` are extra command-line arguments; ``env`` extra environment variables.
    The log (stderr) goes to ``root.parent / (root.name + ".log")``.
    """

    def __init__(
        self,
        root: Path,
        upstream: str | None,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        dockerhub: bool = True,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or mirror_binary()
        self.root = Path(root)
        self.upstream = upstream
        self.args = list(args or [])
        self.env = dict(env or {})
        self.dockerhub = dockerhub
        self.port = free_port()
        self.log_path = self.root.parent / f"{self.root.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def command(self) -> list[str]:
        cmd = [self.binary, "serve", "--addr", self.host, "--root", str(self.root)]
        if self.upstream is not None:
            cmd += ["--upstream", self.upstream]
        cmd += ["--proxy-dockerhub", "true" if self.dockerhub else "false"]
        return cmd + self.args

    def start(self, timeout: float = 15.0) -> Self:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Neither the registry settings nor a forward proxy of the machine running the
        # tests: a test that wants a proxy says so in ``env``.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("REGISTRY_") and k.upper() not in _PROXY_VARIABLES
        }
        env.update(self.env)
        self._proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MirrorError(f"mirror exited with {self._proc.returncode}:\n{self.log()}")
            if self._ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise MirrorError(f"mirror did not answer within {timeout}s:\n{self.log()}")

    @property
    def tls(self) -> bool:
        return "--tls-cert" in self.args or "REGISTRY_HTTP_TLS_CERTIFICATE" in self.env

    def signal(self, sig: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(sig)

    def _ping(self) -> bool:
        conn: http.client.HTTPConnection
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            # 401/403/429: up, and guarded (authentication, allow list, rate limit).
            return conn.getresponse().status in (200, 401, 403, 429)
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        code = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            code = self._proc.returncode
            self._proc = None
        self._close_log()
        return code

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to end by itself (after a signal the test sent); its exit
        status. AssertionError, the process killed, if it does not end in time."""
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mirror did not exit within {timeout}s:\n{self.log()}") from None
        self._proc = None
        self._close_log()
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the mirror can tell."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> Self:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def log(self, since: int = 0) -> str:
        """The log, from byte offset ``since`` (a former ``log_size()``)."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")
        return ""

    def log_size(self) -> int:
        """Bytes logged so far: ``log(since=...)`` reads what comes after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0
