"""A test server run in the foreground as a real process: started from a work directory,
waited for until it listens on loopback (and says it is ready), stopped with SIGTERM
(then SIGKILL)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import ClassVar, Self

from .ports import free_port
from .service import Service

__all__ = ["ServerError", "ServerProcess", "find_binary", "listening"]


class ServerError(RuntimeError):
    """A test server failed to start."""


def find_binary(name: str, *fallbacks: str) -> str | None:
    """``name`` on PATH, else the first fallback path that exists (``/usr/sbin`` is not
    on every user's PATH)."""
    return shutil.which(name) or next((f for f in fallbacks if Path(f).exists()), None)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess(Service):
    """Subclasses say what to run (:meth:`command`, after :meth:`prepare` wrote its
    configuration into ``workdir``), on which ports it listens, and what it logged."""

    name: ClassVar[str] = "server"
    error: ClassVar[type[ServerError]] = ServerError

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ports(self) -> list[int]:
        return [self.port]

    def prepare(self) -> None:
        """Write the configuration (the work directory exists)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def log(self) -> str:
        return ""

    def output(self) -> Path | None:
        """The file the process's stdout and stderr are appended to (None: discarded)."""
        return None

    def ready(self) -> bool:
        """Asked once it listens: ready to serve (a server that loads its data first)?"""
        return True

    def start(self, timeout: float = 10.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        output = self.output()
        with contextlib.ExitStack() as stack:
            sink = subprocess.DEVNULL if output is None else stack.enter_context(output.open("ab"))
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self.error(f"{self.name} exited with {self._proc.returncode}:\n{self.log()}")
            if all(listening(port) for port in self.ports()) and self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise self.error(f"{self.name} did not listen within {timeout}s:\n{self.log()}")

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
