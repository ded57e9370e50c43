"""The one place where the HTTP client's exceptions become typed upstream errors.

Every exchange with an upstream (a request and its redirects, a token fetch, a body read,
a blob streamed to the clients) runs inside :func:`translated`, so nothing of aiohttp
leaves :mod:`upstream`:

* no connection (:class:`aiohttp.ClientConnectorError`): refused by the guarded pools'
  resolver (a non-public address) is an :class:`UpstreamProtocolError` when the exchange
  names what was refused (``refused``), else an :class:`UpstreamUnavailable`;
* a connection lost, refused or reset, a payload cut short, a socket timeout:
  :class:`UpstreamUnavailable`;
* any other client error (an unreadable answer): :class:`UpstreamProtocolError` when the
  exchange names it so (``invalid``), else :class:`UpstreamUnavailable`.

Typed errors raised inside pass through unchanged. A metadata request's own time limit
is :func:`deadline` (an :class:`UpstreamUnavailable` when it runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp

from registry_mirror.upstream.errors import (
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from registry_mirror.upstream.transport import PrivateAddressRefused

__all__ = ["deadline", "describe", "retryable", "translated"]


@contextlib.contextmanager
def translated(
    unreachable: str, *, refused: str | None = None, invalid: str | None = None
) -> Iterator[None]:
    """Translate the HTTP client's exceptions raised inside (see the module).

    ``unreachable`` starts the message of an :class:`UpstreamUnavailable` (the
    exception's text follows); ``refused`` names the target of a connection refused for
    its non-public address (``"redirect to"``); ``invalid`` starts the message of an
    :class:`UpstreamProtocolError` for a client error that is no connection failure.
    """
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        if refused is not None and isinstance(exc.os_error, PrivateAddressRefused):
            raise UpstreamProtocolError(
                f"refused {refused} a non-public address: {exc.os_error};"
                " allow_private_redirects permits it"
            ) from exc
        raise UpstreamUnavailable(f"{unreachable}: {describe(exc)}") from exc
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"{unreachable}: {describe(exc)}") from exc
    except aiohttp.ClientError as exc:
        if invalid is not None:
            raise UpstreamProtocolError(f"{invalid}: {describe(exc)}") from exc
        raise UpstreamUnavailable(f"{unreachable}: {describe(exc)}") from exc


@contextlib.asynccontextmanager
async def deadline(seconds: float, name: str) -> AsyncIterator[None]:
    """At most ``seconds`` for everything inside (every redirect, token and body read);
    then an :class:`UpstreamUnavailable` saying ``name`` did not answer in time."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise UpstreamUnavailable(f"{name} did not answer within {seconds:g}s") from None


def retryable(exc: BaseException) -> bool:
    """A request that failed this way may be sent once more (idempotent reads): the
    connection broke or timed out before any answer; not a connection that could not be
    made at all."""
    return isinstance(exc, aiohttp.ClientConnectionError | TimeoutError) and not isinstance(
        exc, aiohttp.ClientConnectorError
    )


def describe(exc: BaseException) -> str:
    """An exception's text for a message or a log: at most 200 characters."""
    text = str(exc) or type(exc).__name__
    return text[:200]
