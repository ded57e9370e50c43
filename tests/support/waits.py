"""Waiting for something to become true, bounded: the one polling loop of the tests.

    wait_until(lambda: "cache measured" in mirror.log(), message=mirror.log)
    blob = wait_until(lambda: find_blob(...), timeout=20, interval=0.2)

The predicate is asked at once, then every ``interval`` seconds until it returns something
true (which is returned); asked in vain once ``timeout`` seconds have passed, the wait fails
with an :class:`AssertionError` carrying ``message`` (a string, or a callable called only
then, e.g. ``mirror.log`` to show the log as it was at the end).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Message", "wait_until", "wait_until_async"]

T = TypeVar("T")

#: What a failed wait says: a text, or something that makes one when the wait fails.
Message = str | Callable[[], object]

_DEFAULT_MESSAGE = "condition not reached in time"


class _Wait(Generic[T]):
    """One wait: :meth:`done` asks the predicate and fails once the time is up."""

    def __init__(self, predicate: Callable[[], T], timeout: float, message: Message) -> None:
        self.predicate = predicate
        self.timeout = timeout
        self.message = message
        self.deadline = time.monotonic() + timeout
        self.value: T

    def done(self) -> bool:
        value = self.predicate()
        if value:
            self.value = value
            return True
        if time.monotonic() >= self.deadline:
            text = self.message() if callable(self.message) else self.message
            raise AssertionError(f"{text} (waited {self.timeout:g}s)")
        return False


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    message: Message = _DEFAULT_MESSAGE,
) -> T:
    """Poll ``predicate`` (blocking, for test code outside an event loop); see the module."""
    wait = _Wait(predicate, timeout, message)
    while not wait.done():
        time.sleep(interval)
    return wait.value


async def wait_until_async(
    predicate: Callable[[], T],
    timeout: float = 10.0,  # noqa: ASYNC109 - the same bound as wait_until's, not a cancel
    *,
    interval: float = 0.05,
    message: Message = _DEFAULT_MESSAGE,
) -> T:
    """:func:`wait_until` inside a coroutine: sleeps with ``asyncio.sleep``, so the event loop
    keeps running what the predicate waits for."""
    wait = _Wait(predicate, timeout, message)
    while not wait.done():  # noqa: ASYNC110 - what is polled has no event to wait on
        await asyncio.sleep(interval)
    return wait.value
