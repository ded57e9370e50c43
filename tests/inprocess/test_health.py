"""The health probes on the root application: what each answers through start-up, a
failing store or index, an operator's ``health.file``, the checks of things beside the
mirror (``health.http``, ``health.tcp``) and the drain; that they need no credentials,
are not counted against the request rate, and that the allow list holds for them."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from registry_mirror.health import HEALTH_KEY
from registry_mirror.index import IndexFailure
from registry_mirror.storage import StorageError
from tests.inprocess.harness import (
    InProcessMirror,
    ObservedStore,
    StartMirror,
    error_codes,
    write_htpasswd,
)
from tests.support.fakes import FakeUpstream

PROBES: Final = ("/livez", "/readyz", "/startupz", "/debug/health")
FAST: Final = {"health.storagedriver.interval": "0.05", "health.storagedriver.threshold": 1}


async def text(m: InProcessMirror, path: str) -> tuple[int, str]:
    response = await m.client.get(path)
    return response.status, await response.text()


def readiness(m: InProcessMirror, status: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await m.client.get("/readyz")).status == status

    return check


async def until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 10.0,  # noqa: ASYNC109 - a bound on the polling, as wait_until's
) -> None:
    """Poll an HTTP question until it answers yes (the checks run every 50 ms here)."""
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - answered over HTTP, no event
            await asyncio.sleep(0.02)


async def test_a_started_mirror_answers_every_probe(
    start_mirror: StartMirror, upstream: FakeUpstream
) -> None:
    async with start_mirror(upstream) as m:
        await until(readiness(m, 200))
        for path in ("/livez", "/readyz", "/startupz"):
            response = await m.client.get(path)
            assert response.status == 200, path
            assert response.headers["Content-Type"].startswith("text/plain"), path
            assert await response.text() == "ok\n", path
            head = await m.client.head(path)
            assert head.status == 200 and await head.read() == b"", path
        health = await m.client.get("/debug/health")
        assert health.status == 200
        assert health.headers["Content-Type"].startswith("application/json")
        assert await health.json() == {}  # registry:2's healthy answer
        status, body = await text(m, "/readyz?verbose")
        assert status == 200
        assert body.splitlines() == [
            "[+]started ok",
            "[+]storagedriver_filesystem ok",
            "[+]index ok",
            "[+]draining ok",
            "readyz check passed",
        ]
        verbose = await (await m.client.get("/debug/health?verbose")).json()
        assert verbose["ready"] is True and verbose["started"] is True
        assert set(verbose["checks"]) == {"storagedriver_filesystem", "index"}
        assert all(c["ok"] for c in verbose["checks"].values())


async def test_start_up_waits_for_the_first_checks(
    start_mirror: StartMirror, upstream: FakeUpstream
) -> None:
    store = ObservedStore()
    store.write_gate = asyncio.Event()  # the store check's write is held
    async with start_mirror(upstream, store=store) as m:
        status, body = await text(m, "/startupz")
        assert status == 503
        assert "[-]started failed: first checks pending: storagedriver_filesystem" in body
        assert body.endswith("startupz check failed\n")
        status, body = await text(m, "/readyz")
        assert status == 503 and "[-]started failed" in body
        assert (await m.client.get("/livez")).status == 200  # alive all the same
        store.write_gate.set()
        await until(readiness(m, 200))
        assert await text(m, "/startupz") == (200, "ok\n")


async def test_a_failing_store_or_index_is_not_ready_and_says_why(
    start_mirror: StartMirror, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_mirror(upstream, flags=FAST) as m:
        await until(readiness(m, 200))

        async def refuse() -> None:
            raise StorageError("cannot create a staging file: No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(m.store, "begin_write", refuse)
            await until(readiness(m, 503))
            status, body = await text(m, "/readyz")
            assert "[-]storagedriver_filesystem failed: the store takes no writes:" in body
            assert "No space left on device" in body
            assert "index" not in body  # only what failed
            health = await m.client.get("/debug/health")
            assert health.status == 503
            problems = await health.json()
            assert list(problems) == ["storagedriver_filesystem"]
            assert "No space left on device" in problems["storagedriver_filesystem"]
        await until(readiness(m, 200))

        async def broken() -> None:
            raise IndexFailure("index root/index.db: disk I/O error")

        with monkeypatch.context() as patch:
            patch.setattr(m.index, "ping", broken)
            await until(readiness(m, 503))
            status, body = await text(m, "/readyz")
            assert status == 503
            assert "[-]index failed: the index does not answer: " in body
            assert "disk I/O error" in body
        await until(readiness(m, 200))


async def test_a_check_fails_only_after_its_threshold(
    start_mirror: StartMirror, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = {**FAST, "health.storagedriver.threshold": 3}
    async with start_mirror(upstream, flags=flags) as m:
        await until(readiness(m, 200))
        calls = 0
        held = asyncio.Event()
        go_on = asyncio.Event()

        async def broken() -> None:
            nonlocal calls
            calls += 1
            if calls == 2:  # the second run waits: one failure is on record meanwhile
                held.set()
                await go_on.wait()
            raise IndexFailure("locked")

        monkeypatch.setattr(m.index, "ping", broken)
        await held.wait()
        assert (await m.client.get("/readyz")).status == 200  # 1 failure, threshold 3
        go_on.set()
        await until(readiness(m, 503))
        assert calls >= 3
        monkeypatch.undo()
        await until(readiness(m, 200))  # one success is enough to pass again


async def test_health_file_takes_the_mirror_out_of_service(
    start_mirror: StartMirror, upstream: FakeUpstream, tmp_path: Path
) -> None:
    switch = tmp_path / "maintenance"
    flags = {"health.file": json.dumps([{"file": str(switch), "interval": "0.05s"}])}
    async with start_mirror(upstream, flags=flags) as m:
        await until(readiness(m, 200))
        switch.touch()
        await until(readiness(m, 503))
        status, body = await text(m, "/readyz")
        assert status == 503
        assert f"[-]{switch} failed: {switch} exists" in body
        assert (await (await m.client.get("/debug/health")).json()) == {
            str(switch): f"{switch} exists"
        }
        switch.unlink()
        await until(readiness(m, 200))


async def test_http_and_tcp_checks_show_in_debug_health_only(
    start_mirror: StartMirror, upstream: FakeUpstream
) -> None:
    answer = {"status": 200}

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=answer["status"])

    dependency = web.Application()
    dependency.router.add_get("/ping", ping)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
    async with TestServer(dependency, host="127.0.0.1") as server:
        uri = f"http://127.0.0.1:{server.port}/ping"
        flags = {
            "health.http": json.dumps([{"uri": uri, "interval": "0.05s", "timeout": "2s"}]),
            "health.tcp": json.dumps(
                [
                    {"addr": dead, "interval": "0.05s"},
                    {"addr": f"127.0.0.1:{server.port}", "interval": "0.05s"},
                ]
            ),
        }
        async with start_mirror(upstream, flags=flags) as m:

            async def problems() -> dict[str, str]:
                response = await m.client.get("/debug/health")
                found: dict[str, str] = await response.json()
                assert response.status == (503 if found else 200)
                return found

            async def dead_only() -> bool:
                return set(await problems()) == {dead}

            await until(dead_only)
            assert dead in (await problems())[dead]
            assert (await m.client.get("/readyz")).status == 200  # beside, not readiness

            answer["status"] = 500

            async def both() -> bool:
                return set(await problems()) == {dead, uri}

            await until(both)
            assert (await problems())[uri] == f"{uri} answered 500, expected 200"
            assert (await m.client.get("/readyz")).status == 200


async def test_draining_is_not_ready_but_alive(
    start_mirror: StartMirror, upstream: FakeUpstream
) -> None:
    async with start_mirror(upstream) as m:
        await until(readiness(m, 200))
        m.client.app[HEALTH_KEY].drain()
        status, body = await text(m, "/readyz")
        assert status == 503
        assert body == "[-]draining failed: shutting down\nreadyz check failed\n"
        assert await text(m, "/livez") == (200, "ok\n")
        health = await m.client.get("/debug/health")
        assert health.status == 503
        assert await health.json() == {"draining": "shutting down"}


async def test_probes_need_no_credentials_and_are_not_rate_limited(
    start_mirror: StartMirror, upstream: FakeUpstream, tmp_path: Path
) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"carol": "secret"})
    flags = {
        "auth.htpasswd.path": str(htpasswd),
        "limits.requests_per_second": 1,
        "limits.burst": 2,
    }
    async with start_mirror(upstream, flags=flags) as m:
        await until(readiness(m, 200))
        for _ in range(5):
            for path in PROBES:
                assert (await m.client.get(path)).status == 200, path
        # The budget is untouched by the probes: the API still has its burst of 2.
        first = await m.client.get("/v2/")
        assert first.status == 401  # the API wants credentials; the probes did not
        assert (await m.client.get("/v2/")).status == 401
        limited = await m.client.get("/v2/")
        assert limited.status == 429
        assert await error_codes(limited) == ["TOOMANYREQUESTS"]
        assert (await m.client.get("/readyz")).status == 200  # a limited client's probe too


async def test_the_allow_list_holds_for_the_probes(
    start_mirror: StartMirror, upstream: FakeUpstream
) -> None:
    async with start_mirror(upstream, flags={"access.allow": "10.0.0.0/8"}) as m:
        for path in PROBES:
            refused = await m.client.get(path)  # the test client comes from 127.0.0.1
            assert refused.status == 403, path
            assert await error_codes(refused) == ["DENIED"], path
