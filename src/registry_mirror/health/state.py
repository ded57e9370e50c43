"""What the probes answer from: start-up, the checks' verdicts, the upstreams' breakers,
and the drain. Built with the application, given its parts when the server starts, told
when the drain begins; every question is answered from memory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from registry_mirror.config import Settings
from registry_mirror.health.checks import Check, file_check, http_check, storage_checks, tcp_check
from registry_mirror.health.monitor import CheckStatus, Monitor
from registry_mirror.mirror import Mirror
from registry_mirror.upstream.transport import Breaker

__all__ = ["Health", "Item", "UpstreamState"]

DRAINING = "draining"
STARTED = "started"


@dataclass(frozen=True, slots=True)
class Item:
    """One line of a probe's answer: what, whether it is well, and why not."""

    name: str
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamState:
    name: str
    url: str
    up: bool
    last_success: float | None
    last_failure: float | None
    last_error: str


class Health:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.monitor: Monitor | None = None  # from start to stop
        self.draining = False
        self._mirror: Mirror | None = None  # from start on
        self._session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def running(self, mirror: Mirror) -> AsyncIterator[None]:
        """The checks of ``mirror``'s store and index (and of what is configured beside
        them) running in the background for the duration."""
        self._mirror = mirror
        monitor = Monitor(self._checks(mirror))
        self.monitor = monitor
        monitor.start()
        try:
            yield
        finally:
            await monitor.stop()
            if self._session is not None:
                await self._session.close()

    def _checks(self, mirror: Mirror) -> list[Check]:
        health = self._settings.health
        checks: list[Check] = []
        driver = health.storagedriver
        if driver.enabled:
            checks += storage_checks(
                mirror.store,
                mirror.index,
                min_free=self._settings.readiness_min_free,
                interval=driver.interval,
                threshold=driver.threshold,
            )
        checks += [file_check(entry.file, entry.interval) for entry in health.file]
        checks += [http_check(entry, self._http_session) for entry in health.http]
        checks += [tcp_check(entry) for entry in health.tcp]
        return checks

    def _http_session(self) -> aiohttp.ClientSession:
        """The ``health.http`` checks' own session, opened on first use."""
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    def drain(self) -> None:
        """Shutting down: not ready from now on."""
        self.draining = True

    @property
    def started(self) -> bool:
        """The cache and the index are open and every readiness check has run once."""
        return self.monitor is not None and self.monitor.first_round_done

    @property
    def recovering(self) -> bool:
        """Files a crash left unindexed are still being checked (in the background)."""
        return self._mirror is not None and self._mirror.recovering

    def downloads(self) -> int:
        """Upstream downloads in progress."""
        return 0 if self._mirror is None else self._mirror.downloads()

    def statuses(self) -> list[CheckStatus]:
        return [] if self.monitor is None else list(self.monitor.statuses.values())

    def startup(self) -> list[Item]:
        if self.monitor is None:
            return [Item(STARTED, False, "opening the cache")]
        pending = [s.check.name for s in self.statuses() if s.check.readiness and not s.runs]
        if pending:
            return [Item(STARTED, False, f"first checks pending: {', '.join(pending)}")]
        return [Item(STARTED, True)]

    def readiness(self) -> list[Item]:
        """What /readyz answers from: started, each readiness check, not draining."""
        items = self.startup()
        for status in self.statuses():
            if status.check.readiness:
                items.append(Item(status.check.name, not status.failing, status.error))
        items.append(Item(DRAINING, not self.draining, "shutting down" if self.draining else ""))
        return items

    def problems(self) -> dict[str, str]:
        """registry:2's ``/debug/health`` map: each failing check → its error; here also
        each upstream marked down, and the drain."""
        found = {s.check.name: s.error for s in self.statuses() if s.failing}
        for upstream in self.upstreams():
            if not upstream.up:
                found[f"upstream {upstream.name}"] = f"marked down: {upstream.last_error}"
        if self.draining:
            found[DRAINING] = "shutting down"
        return found

    def upstreams(self) -> list[UpstreamState]:
        """Each upstream as its circuit breaker knows it (nothing is asked for this:
        every upstream request counts, no probe costs an upstream rate limit)."""
        if self._mirror is None:
            return []
        states = []
        for entry in self._mirror.router.entries:
            breaker = getattr(entry.upstream, "breaker", None)
            if not isinstance(breaker, Breaker):
                continue
            states.append(
                UpstreamState(
                    entry.name,
                    entry.upstream.url,
                    not breaker.is_open,
                    breaker.last_success,
                    breaker.last_failure,
                    breaker.last_error,
                )
            )
        return states
