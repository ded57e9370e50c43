"""The probes, on the root application beside ``/v2``: ``/livez``, ``/readyz``,
``/startupz`` (plain text, Kubernetes' style) and registry:2's ``/debug/health`` (JSON).

Each answers from what :class:`~registry_mirror.health.state.Health` already knows: no
I/O, no waiting. They need no credentials and are not counted against the request-rate
limits (the root middleware asks :func:`is_probe`); the network allow list holds for
them as for every path. ``GET`` and ``HEAD``.
"""

from __future__ import annotations

import datetime
from typing import Final

from aiohttp import web

from registry_mirror.health.state import Health, Item

__all__ = ["HEALTH_KEY", "PROBE_ROUTES", "add_health_routes", "is_probe"]

HEALTH_KEY: Final = web.AppKey("health", Health)
PROBE_ROUTES: Final = frozenset({"livez", "readyz", "startupz", "debug-health"})
NO_STORE: Final = {"Cache-Control": "no-store"}


def is_probe(request: web.Request) -> bool:
    """A request for one of the probes (routing has already matched it)."""
    return request.match_info.route.name in PROBE_ROUTES


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/livez", livez, name="livez")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/startupz", startupz, name="startupz")
    app.router.add_get("/debug/health", debug_health, name="debug-health")


async def livez(request: web.Request) -> web.Response:
    """The process answers (also while it drains: it is alive, just leaving)."""
    return web.Response(text="ok\n", headers=NO_STORE)


async def readyz(request: web.Request) -> web.Response:
    return _answer(request, "readyz", request.app[HEALTH_KEY].readiness())


async def startupz(request: web.Request) -> web.Response:
    health = request.app[HEALTH_KEY]
    items = health.startup()
    notes = ["recovery of files left unindexed by a crash in progress"] if health.recovering else []
    return _answer(request, "startupz", items, notes)


def _answer(
    request: web.Request, probe: str, items: list[Item], notes: list[str] | None = None
) -> web.Response:
    """200 ``ok`` or 503 naming what failed; ``?verbose`` lists every item
    (``[+]index ok`` / ``[-]disk failed: …``), as Kubernetes' own endpoints do."""
    ok = all(item.ok for item in items)
    verbose = "verbose" in request.query
    if ok and not verbose:
        return web.Response(text="ok\n", headers=NO_STORE)
    lines = [
        f"[+]{item.name} ok" if item.ok else f"[-]{item.name} failed: {item.error}"
        for item in items
        if verbose or not item.ok
    ]
    lines += [f"note: {note}" for note in notes or []]
    lines.append(f"{probe} check {'passed' if ok else 'failed'}")
    return web.Response(text="\n".join(lines) + "\n", status=200 if ok else 503, headers=NO_STORE)


async def debug_health(request: web.Request) -> web.Response:
    """registry:2's answer: ``{}`` (200) when all is well, else each failing check → its
    error (503). ``?verbose``: every check and upstream with its details."""
    health = request.app[HEALTH_KEY]
    problems = health.problems()
    status = 503 if problems else 200
    if "verbose" not in request.query:
        return web.json_response(problems, status=status, headers=NO_STORE)
    checks = {
        s.check.name: {
            "ok": not s.failing if s.runs else None,
            "readiness": s.check.readiness,
            "error": s.error,
            "failures": s.failures,
            "threshold": s.check.threshold,
            "checked": _when(s.checked),
            "since": _when(s.since),
        }
        for s in health.statuses()
    }
    upstreams = {
        u.name: {
            "url": u.url,
            "up": u.up,
            "last_success": _when(u.last_success),
            "last_failure": _when(u.last_failure),
            "last_error": u.last_error,
        }
        for u in health.upstreams()
    }
    body = {
        "problems": problems,
        "started": health.started,
        "ready": all(item.ok for item in health.readiness()),
        "draining": health.draining,
        "recovering": health.recovering,
        "downloads": health.downloads(),
        "checks": checks,
        "upstreams": upstreams,
    }
    return web.json_response(body, status=status, headers=NO_STORE)


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
