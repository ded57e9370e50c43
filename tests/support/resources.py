"""The resource oracle: a process's open descriptors, threads and RSS, read from /proc.

Hostile-input, fuzz and fault tests take a baseline before they attack the mirror and
check afterwards that everything came back: a leak is a denial of service.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["LAZY_THREADS", "Resources", "assert_returns_to_baseline", "resources"]


#: Threads a mirror starts on first use and keeps, bounded: the store's pools (4 writers,
#: 8 readers, 1 scanner), bcrypt's 2 and the default pool's few. A baseline taken from a
#: fresh process allows these on top (``thread_slack=LAZY_THREADS``); a leak grows past.
LAZY_THREADS: Final = 18


@dataclass(frozen=True, slots=True)
class Resources:
    fds: int
    threads: int
    rss: int  # bytes
    fd_targets: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.fds} descriptors, {self.threads} threads, {self.rss / 2**20:.1f} MiB RSS"


def resources(pid: int) -> Resources:
    """What the process ``pid`` holds right now."""
    fd_dir = Path(f"/proc/{pid}/fd")
    targets: list[str] = []
    for entry in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(fd_dir / entry))
        except FileNotFoundError:  # closed while listing
            continue
    threads = rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return Resources(len(targets), threads, rss, tuple(sorted(targets)))


def assert_returns_to_baseline(
    pid: int,
    baseline: Resources,
    *,
    fd_slack: int = 4,
    thread_slack: int = 4,
    rss_slack: int = 40 * 2**20,
    timeout: float = 15.0,
) -> Resources:
    """Wait (up to ``timeout``) until ``pid`` is back within the slack of ``baseline``
    (idle keep-alive connections and pooled upstream connections may linger briefly);
    fail naming what stayed open."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources(pid)
        ok = (
            now.fds <= baseline.fds + fd_slack
            and now.threads <= baseline.threads + thread_slack
            and now.rss <= baseline.rss + rss_slack
        )
        if ok:
            return now
        if time.monotonic() > deadline:
            extra = sorted(set(now.fd_targets) - set(baseline.fd_targets))[:20]
            raise AssertionError(
                f"resources did not return to baseline: before {baseline.describe()},"
                f" after {now.describe()}; new descriptors: {extra}"
            )
        time.sleep(0.25)
