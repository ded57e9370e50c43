"""Single-flight: one in-flight computation per key; followers await the leader's result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """``await flights.run(key, fn)``: the first caller starts ``fn()`` as a task,
    every caller with the same key while it runs gets the same result or error.

    The task is shielded: a caller that goes away (client disconnect) does not
    cancel the work the others are waiting for.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def __repr__(self) -> str:
        keys = ", ".join(repr(k) for k in list(self._tasks)[:5])
        more = f", … {len(self._tasks) - 5} more" if len(self._tasks) > 5 else ""
        return f"<SingleFlight {self.name}: {len(self._tasks)} in flight [{keys}{more}]>"

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: K) -> bool:
        """Is a computation for ``key`` in flight (a caller now would follow it)?"""
        return key in self._tasks

    async def run(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(fn())
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: followers may all have gone
