"""Index and storage failures that must not fail a request (a full disk, say)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from registry_mirror.index import IndexFailure
from registry_mirror.logs import ThrottledLog

__all__ = ["StorageGuard"]

log = logging.getLogger(__name__)


class StorageGuard:
    """Logs a failing store or index once a minute, not once a request; the request is
    served without caching."""

    def __init__(self) -> None:
        self._log = ThrottledLog(log)

    def failing(self, exc: Exception) -> None:
        self._log(
            "storage", logging.ERROR, "cache storage failing, serving without caching: %s", exc
        )

    async def record(self, write: Awaitable[None]) -> bool:
        """An index write that must not fail the request: False if it failed."""
        try:
            await write
        except IndexFailure as exc:
            self.failing(exc)
            return False
        return True
