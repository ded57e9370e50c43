"""The one translation of the HTTP client's exceptions into typed upstream errors."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from registry_mirror.upstream.errors import (
    UpstreamError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from registry_mirror.upstream.translate import deadline, retryable, translated
from registry_mirror.upstream.transport import PrivateAddressRefused

KEY = ConnectionKey("cdn.example", 443, True, True, None, None, None)


def connector_error(os_error: OSError) -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(KEY, os_error)


def raised(exc: BaseException, **where: str) -> UpstreamError:
    with pytest.raises(UpstreamError) as info, translated("up unreachable", **where):
        raise exc
    assert info.value.__cause__ is exc
    return info.value


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        connector_error(ConnectionRefusedError(111, "Connection refused")),
        TimeoutError(),
    ],
)
def test_lost_connections_and_timeouts_are_unavailable(exc: BaseException) -> None:
    error = raised(exc, refused="redirect to", invalid="up")
    assert type(error) is UpstreamUnavailable
    assert error.message.startswith("up unreachable: ")
    assert error.message == f"up unreachable: {str(exc)[:200] or type(exc).__name__}"


def test_a_body_cut_short_is_unavailable() -> None:
    exc = aiohttp.ClientPayloadError("Response payload is not completed")
    error = raised(exc)
    assert type(error) is UpstreamUnavailable
    assert error.message == "up unreachable: Response payload is not completed"


def test_a_private_address_refused_is_a_protocol_error_where_it_is_named() -> None:
    exc = connector_error(PrivateAddressRefused("cdn.example", ["10.0.0.1"]))
    error = raised(exc, refused="redirect to")
    assert type(error) is UpstreamProtocolError
    assert error.message == (
        "refused redirect to a non-public address: cdn.example resolves to the non-public"
        " address 10.0.0.1; allow_private_redirects permits it"
    )
    assert type(raised(exc)) is UpstreamUnavailable  # a body read: no target to name


def test_other_client_errors_are_protocol_errors_where_named_else_unavailable() -> None:
    exc = aiohttp.InvalidURL("ftp:nowhere")
    error = raised(exc, invalid="up")
    assert type(error) is UpstreamProtocolError and error.message == "up: ftp:nowhere"
    assert type(raised(exc)) is UpstreamUnavailable


def test_typed_errors_and_others_pass_through() -> None:
    with pytest.raises(UpstreamNotFound), translated("up unreachable"):
        raise UpstreamNotFound("gone")
    with pytest.raises(ValueError), translated("up unreachable"):
        raise ValueError("not the network's")


def test_only_a_connection_broken_before_any_answer_is_retried() -> None:
    assert retryable(aiohttp.ServerDisconnectedError())
    assert retryable(TimeoutError())
    assert not retryable(connector_error(ConnectionRefusedError(111, "Connection refused")))
    assert not retryable(aiohttp.ClientPayloadError("cut"))
    assert not retryable(UpstreamUnavailable("already typed"))


def test_a_deadline_is_unavailable() -> None:
    async def scenario() -> None:
        async with deadline(0.01, "up"):
            await asyncio.sleep(5)

    with pytest.raises(UpstreamUnavailable, match=r"^up did not answer within 0\.01s$"):
        asyncio.run(scenario())
