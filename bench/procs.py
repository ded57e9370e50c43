"""Client processes (tracked, so that Ctrl-C stops them all) and ``/proc`` readers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "PROXY_VARS",
    "CpuSnapshot",
    "Proc",
    "Runner",
    "child_pids",
    "clean_env",
    "cpu_between",
    "cpu_seconds",
    "cpu_snapshot",
    "kib_field",
    "proc_status",
    "quiesce",
    "tool_version",
]

T = TypeVar("T")

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def clean_env(tmp: Path | None = None) -> dict[str, str]:
    """The environment without proxies or registry settings (temp files in ``tmp``)."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    for key in list(env):
        if key.startswith(("REGISTRY_", "REGISTRY_MIRROR_")):
            del env[key]
    env["NO_PROXY"] = env["no_proxy"] = "*"
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return env


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class Runner:
    """Runs client processes in ``env``; remembers the live ones so that they can be killed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def run(self, args: Sequence[str], *, timeout: float) -> Proc:
        """Run a client process (killed on Ctrl-C or timeout), capture its output."""
        start = time.monotonic()
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        with self._lock:
            self._live.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with self._lock:
                self._live.discard(proc)
        return Proc(
            proc.returncode,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
            time.monotonic() - start,
        )

    def kill_all(self) -> None:
        with self._lock:
            procs = list(self._live)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def parallel(self, fn: Callable[[int], T], count: int, workers: int) -> list[T]:
        """``[fn(0), ..., fn(count - 1)]`` with at most ``workers`` running at once."""
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(fn, i) for i in range(count)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                self.kill_all()
                raise


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    ticks_s: float  # user + system time of the process, in clock ticks (exited threads too)
    threads_ns: dict[int, int]  # time on a CPU of each live thread, in ns (schedstat)


def cpu_snapshot(pid: int) -> CpuSnapshot:
    threads: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                threads[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return CpuSnapshot(cpu_seconds(pid), threads)


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU seconds used between two snapshots: to the nanosecond from the threads' schedstat
    when no thread ended in between, else in clock ticks."""
    if before.threads_ns and before.threads_ns.keys() <= after.threads_ns.keys():
        used = sum(ns - before.threads_ns.get(tid, 0) for tid, ns in after.threads_ns.items())
        return used / 1e9
    return after.ticks_s - before.ticks_s


def kib_field(status: dict[str, str], key: str) -> float | None:
    value = status.get(key)
    if value is None:
        return None
    return int(value.split()[0]) / 1024  # "123456 kB" -> MiB


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(p) for p in (task / "children").read_text().split()]
    return out


def tool_version(args: Sequence[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=10, check=False)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]
    return "?"


def quiesce(
    pids: Sequence[int],
    files: Sequence[Path] = (),
    *,
    window: float = 0.3,
    busy: float = 0.02,
    timeout: float = 120.0,
) -> bool:
    """Wait until none of ``pids`` used more than ``busy`` s of CPU over ``window`` s and
    none of ``files`` (logs) grew meanwhile.

    False if that did not happen within ``timeout`` s (a process that is gone is idle).
    """
    deadline = time.monotonic() + timeout

    def sample() -> tuple[list[float], list[int]]:
        cpu: list[float] = []
        for pid in pids:
            try:
                cpu.append(cpu_seconds(pid))
            except (OSError, IndexError, ValueError):
                cpu.append(0.0)
        sizes: list[int] = []
        for path in files:
            try:
                sizes.append(path.stat().st_size)
            except OSError:
                sizes.append(0)
        return cpu, sizes

    before = sample()
    while True:
        time.sleep(window)
        after = sample()
        idle = all(b - a <= busy for a, b in zip(before[0], after[0], strict=True))
        if idle and before[1] == after[1]:
            return True
        if time.monotonic() > deadline:
            return False
        before = after
