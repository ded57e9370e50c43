"""The composition root: wires settings, store, index, upstream and routes into an app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from registry_mirror.api import (
    MIRROR_KEY,
    SENDFILE_KEY,
    WRITE_TIMEOUT_KEY,
    SendfileReactor,
    add_api_version,
    error_middleware,
    setup_routes,
)
from registry_mirror.api.access import ACCESS_KEY, AccessPolicy, access_middleware
from registry_mirror.config import Settings
from registry_mirror.index import Index, SQLiteIndex
from registry_mirror.mirror import Mirror, Router, UpstreamEntry
from registry_mirror.mirror.eviction import StorageLimits
from registry_mirror.rootlock import RootLock
from registry_mirror.storage import BlobStore, FilesystemBlobStore
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
    live and die with the app (``cleanup_ctx``).
    """
    app = web.Application(
        middlewares=[access_middleware, error_middleware], client_max_size=1024 * 1024
    )
    app[ACCESS_KEY] = AccessPolicy(settings)
    app[WRITE_TIMEOUT_KEY] = settings.http.write_timeout
    app.on_cleanup.append(app[ACCESS_KEY].close)
    root = settings.root

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        nonlocal store, index, router
        own_store = store is None  # a store given by the caller is the caller's to close
        # One server per cache root, before anything touches it (see rootlock).
        lock = await asyncio.to_thread(RootLock, root)
        if store is None:
            fs = FilesystemBlobStore(root)
            await asyncio.to_thread(fs.prepare)
            store = fs
        removed = await store.clean_staging()
        if removed:
            log.info("removed %d unfinished downloads left by a previous run", removed)
        if index is None:
            index = SQLiteIndex(root / "index.db", generation=lock.generation)
        await index.open()
        sessions: Sessions | None = None
        if router is None:
            sessions = Sessions.create(USER_AGENT)
            router = build_router(settings, sessions)
        storage = settings.storage
        mirror = Mirror(
            store,
            index,
            router,
            limits=StorageLimits(storage.quota, storage.min_free, storage.max_idle),
            max_fetches=settings.limits.upstream_fetches,
        )
        await mirror.start()
        app[MIRROR_KEY] = mirror
        reactor = SendfileReactor(stall_timeout=settings.http.write_timeout)
        app[SENDFILE_KEY] = reactor
        flusher = asyncio.create_task(_flush_forever(index))
        for entry in router.entries:
            via = entry.upstream.proxy_description()
            log.info(
                "mirroring %s as %s%s%s",
                entry.upstream.url,
                entry.name,
                " (default)" if entry is router.default else "",
                f" via proxy {via}" if via else "",
            )
        log.info("cache in %s", root)
        for warning in settings.warnings():
            log.warning("%s", warning)
        for name in settings.service_links:
            log.debug("environment variable %s is a Kubernetes service link: ignored", name)
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await mirror.close()
            await asyncio.to_thread(reactor.close)
            await index.close()
            if own_store:
                await store.close()
            if sessions is not None:
                await sessions.close()
            lock.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(add_api_version)
    setup_routes(app)
    return app


def build_router(settings: Settings, sessions: Sessions) -> Router:
    """One :class:`Upstream` per configured registry, all on the same connection pools
    (metadata and blobs apart); each has its own credentials, token cache, forward proxy
    and circuit breaker, never shared."""
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
