"""The composition root: wires settings, store, index, upstream and routes into an app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from registry_mirror import __version__
from registry_mirror.api import (
    API_PREFIX,
    MAX_REQUEST_BODY,
    MIRROR_KEY,
    SENDFILE_KEY,
    SendfileReactor,
    registry_api,
    root_middleware,
)
from registry_mirror.api.access import ACCESS_KEY, AccessPolicy
from registry_mirror.api.admin import ADMIN_KEY, ADMIN_PREFIX, admin_api
from registry_mirror.api.observe import OBSERVER_KEY, RequestObserver
from registry_mirror.api.scrape import SCRAPE_KEY, MirrorCollector, Scrape, metrics_handler
from registry_mirror.backends import open_index, open_store
from registry_mirror.config import Settings
from registry_mirror.health import HEALTH_KEY, Health, add_health_routes
from registry_mirror.index import Index
from registry_mirror.maintenance.admin import AdminActions
from registry_mirror.maintenance.cache import Cache
from registry_mirror.metrics import Metrics
from registry_mirror.mirror import Evictor, Mirror, Pins, Router, StorageLimits, UpstreamEntry
from registry_mirror.rootlock import RootLock
from registry_mirror.storage import BlobStore, Staging
from registry_mirror.upstream import RegistryClient, Sessions

__all__ = ["create_app"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL: Final = 5.0
USER_AGENT: Final = "registry-mirror/0.1"


def create_app(
    settings: Settings,
    *,
    store: BlobStore | None = None,
    index: Index | None = None,
    router: Router | None = None,
) -> web.Application:
    """Build the application; the parts not given are built from ``settings``.

    The HTTP client session, the index connection and the background flusher
    live and die with the app (``cleanup_ctx``). The app's metrics (one registry of its
    own) are ``app[SCRAPE_KEY].metrics``; ``/metrics`` is served on it unless
    ``metrics.on_main_port`` is off.
    """
    app = web.Application(
        middlewares=[root_middleware],
        client_max_size=MAX_REQUEST_BODY,
    )
    app[ACCESS_KEY] = policy = AccessPolicy(settings)
    app.on_cleanup.append(policy.close)
    app[HEALTH_KEY] = health = Health(settings)
    add_health_routes(app)
    names = tuple(entry.name for entry in router.entries) if router is not None else tuple(
        config.registry_name for config in settings.all_upstreams()
    )
    metrics = Metrics(__version__, names)
    app[SCRAPE_KEY] = scrape = Scrape(metrics)
    app[OBSERVER_KEY] = RequestObserver(metrics, policy.clients)
    if settings.metrics.on_main_port:
        app.router.add_route("*", "/metrics", metrics_handler)
    api = registry_api(settings, policy)
    admin = admin_api(settings.auth.admins, policy)  # None: no admins, no endpoints
    root = settings.root

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Every resource is entered in ``stack`` as soon as it exists: a failed start
        # closes what was opened before it, in reverse order, and so does the stop.
        async with contextlib.AsyncExitStack() as stack:
            # One server per cache root, before anything touches it (see rootlock).
            lock = await asyncio.to_thread(RootLock, root)
            stack.callback(lock.close)
            blobs = (
                store
                if store is not None
                else await stack.enter_async_context(open_store(settings))
            )
            if isinstance(blobs, Staging):
                removed = await blobs.clean_staging()
                if removed:
                    log.info("removed %d unfinished downloads left by a previous run", removed)
            if index is None:
                opened = await stack.enter_async_context(
                    open_index(settings, generation=lock.generation)
                )
            else:  # given by the caller, closed: opened and closed with the app
                await index.open()
                stack.push_async_callback(index.close)
                opened = index
            routes = router
            if routes is None:
                sessions = Sessions.create(USER_AGENT)
                stack.push_async_callback(sessions.close)
                routes = build_router(settings, sessions, metrics)
            api[MIRROR_KEY] = mirror = await stack.enter_async_context(
                _running_mirror(settings, blobs, opened, routes, metrics)
            )
            if admin is not None:
                admin[ADMIN_KEY] = AdminActions(
                    Cache.opened(settings, blobs, opened),
                    routes,
                    mirror.manifests,
                    in_use=mirror.in_use,
                    on_removed=mirror.removed,
                )
            collector = MirrorCollector(mirror)
            scrape.attach(collector)
            stack.callback(scrape.detach, collector)
            reactor = SendfileReactor(stall_timeout=settings.http.write_timeout)
            stack.push_async_callback(asyncio.to_thread, reactor.close)
            api[SENDFILE_KEY] = reactor
            flusher = asyncio.create_task(_flush_forever(opened))
            stack.push_async_callback(_cancel, flusher)
            # The checks last: stopped first, before what they look at closes.
            await stack.enter_async_context(health.running(mirror))
            _log_start(settings, routes)
            yield

    app.cleanup_ctx.append(lifecycle)
    app.add_subapp(API_PREFIX, api)
    if admin is not None:
        app.add_subapp(ADMIN_PREFIX, admin)
    return app


@contextlib.asynccontextmanager
async def _running_mirror(
    settings: Settings, store: BlobStore, index: Index, router: Router, metrics: Metrics
) -> AsyncIterator[Mirror]:
    """The mirror and its evictor, started; stopped (downloads cancelled) on exit."""
    storage = settings.storage
    pins = Pins()
    limits = StorageLimits(storage.quota, storage.min_free, storage.max_idle)
    evictor = Evictor(index, store, limits, pins.pinned, metrics)
    mirror = Mirror(
        store,
        index,
        router,
        evictor,
        pins,
        max_fetches=settings.limits.upstream_fetches,
        metrics=metrics,
    )
    await evictor.start()
    try:
        await mirror.start()
        yield mirror
    finally:
        await evictor.stop()
        await mirror.close()


def _log_start(settings: Settings, router: Router) -> None:
    for entry in router.entries:
        via = entry.upstream.proxy_description()
        log.info(
            "mirroring %s as %s%s%s",
            entry.upstream.url,
            entry.name,
            " (default)" if entry is router.default else "",
            f" via proxy {via}" if via else "",
        )
    log.info("cache in %s", settings.root)
    for warning in settings.warnings():
        log.warning("%s", warning)
    for name in settings.service_links:
        log.debug("environment variable %s is a Kubernetes service link: ignored", name)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_router(settings: Settings, sessions: Sessions, metrics: Metrics | None = None) -> Router:
    """One :class:`Upstream` per configured registry, all on the same connection pools
    (metadata and blobs apart); each has its own credentials, token cache, forward proxy
    and circuit breaker, never shared; each counts its requests in ``metrics``."""
    entries = []
    for config in settings.all_upstreams():
        upstream = RegistryClient(
            config.base_url,
            sessions,
            name=config.registry_name,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            metadata_timeout=config.metadata_timeout,
            allow_private_redirects=config.allow_private_redirects,
            proxy=settings.outbound_proxy(config),
            metrics=None if metrics is None else metrics.upstream(config.registry_name),
        )
        entries.append(
            UpstreamEntry(
                config.registry_name,
                upstream,
                aliases=config.registry_names - {config.registry_name},
                dockerhub=config.is_dockerhub,
                allow=tuple(config.allow),
                deny=tuple(config.deny),
            )
        )
    return Router(entries, default=settings.proxy.registry_name)


async def _flush_forever(index: Index) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        try:
            await index.flush()
        except Exception as exc:  # keep flushing later; never kill the server for it
            log.error("could not record last use: %s", exc)
