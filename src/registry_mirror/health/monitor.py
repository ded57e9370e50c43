"""The checks, run in the background: each on its own schedule, its latest verdict kept,
so that a probe only reads what is known (no I/O, no waiting).

A run that does not answer within the check's timeout counts as a failure; the run goes
on, and the next starts only once it has ended (a hung disk never piles up probes). A
check counts as failing after ``threshold`` consecutive failures and as passing again
after one success, as registry:2's threshold checks do; the changes are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Final

from registry_mirror.health.checks import Check, CheckFailed

__all__ = ["CheckStatus", "Monitor"]

log = logging.getLogger(__name__)

STOP_WAIT: Final = 5.0  # at stop, a run in progress gets this long before it is cancelled


@dataclass(slots=True)
class CheckStatus:
    check: Check
    runs: int = 0
    failures: int = 0  # consecutive
    error: str = ""  # of the last run ("" if it passed)
    checked: float | None = None  # wall clock of the last verdict
    since: float = field(default_factory=time.time)  # when ``failing`` last changed

    @property
    def failing(self) -> bool:
        return self.failures >= self.check.threshold


class Monitor:
    def __init__(self, checks: list[Check]) -> None:
        self.statuses = {check.name: CheckStatus(check) for check in checks}
        self._loops: list[asyncio.Task[None]] = []
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._first_round = asyncio.Event()

    @property
    def first_round_done(self) -> bool:
        """Every readiness check has a verdict."""
        return self._first_round.is_set()

    async def wait_first_round(self) -> None:
        await self._first_round.wait()

    def start(self) -> None:
        self._check_first_round()
        self._loops = [
            asyncio.create_task(self._run(status), name=f"health {status.check.name}")
            for status in self.statuses.values()
        ]

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        runs = list(self._runs.values())
        if runs:
            _, late = await asyncio.wait(runs, timeout=STOP_WAIT)
            for task in late:
                task.cancel()
            await asyncio.gather(*runs, return_exceptions=True)

    async def _run(self, status: CheckStatus) -> None:
        check = status.check
        while True:
            run = self._runs.get(check.name)
            if run is None:
                run = asyncio.create_task(check.probe())
                self._runs[check.name] = run
            done, _ = await asyncio.wait({run}, timeout=check.timeout)
            if done:
                del self._runs[check.name]
                error = _outcome(check, run)
            else:
                error = f"no answer within {check.timeout:g}s"
            self._record(status, error)
            await asyncio.sleep(check.interval)

    def _record(self, status: CheckStatus, error: str) -> None:
        was = status.failing
        status.runs += 1
        status.error = error
        status.failures = status.failures + 1 if error else 0
        status.checked = time.time()
        if status.failing != was:
            status.since = status.checked
            name = status.check.name
            if status.failing:
                log.warning("health check %s failing: %s", name, error)
            else:
                log.warning("health check %s passes again", name)
        self._check_first_round()

    def _check_first_round(self) -> None:
        if all(s.runs for s in self.statuses.values() if s.check.readiness):
            self._first_round.set()


def _outcome(check: Check, run: asyncio.Task[None]) -> str:
    """What a finished run says: "" when it passed, else the failure."""
    with contextlib.suppress(asyncio.CancelledError):
        error = run.exception()
        if error is None:
            return ""
        if isinstance(error, CheckFailed):
            return str(error)
        # A check should only fail with CheckFailed: anything else is a defect, logged
        # in full, and still a failure of the check.
        log.error("health check %s raised %r", check.name, error, exc_info=error)
        return f"{type(error).__name__}: {error}"
    return "cancelled"
