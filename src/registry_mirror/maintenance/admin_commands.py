"""The admin actions on the command line: ``inspect``, ``refresh``, ``forget`` IMAGE.

A thin face over :mod:`registry_mirror.maintenance.admin`, the same code as the HTTP
endpoints: arguments in, a table (or JSON) out, exit statuses for scripts. Runs beside
a live server (which is told of each change) or on a cache no server uses.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from rich.table import Table

from registry_mirror.app import USER_AGENT, build_router
from registry_mirror.config import Settings
from registry_mirror.maintenance.admin import (
    AdminActions,
    BadImage,
    ForgetResult,
    ImageReport,
    NeedsTag,
    NotCached,
    RefreshResult,
)
from registry_mirror.maintenance.cache import Cache
from registry_mirror.maintenance.console import err, human_size, local_time, out, run_async
from registry_mirror.mirror.guard import StorageGuard
from registry_mirror.mirror.links import RepoLinks
from registry_mirror.mirror.manifests import Manifests
from registry_mirror.mirror.presence import Presence
from registry_mirror.mirror.routing import RegistryNotMirrored, RepositoryDenied
from registry_mirror.rootlock import RootLocked
from registry_mirror.upstream import Sessions, UpstreamError

__all__ = ["ADMIN_COMMANDS", "add_admin_commands", "run_admin"]

ADMIN_COMMANDS: Final = ("inspect", "refresh", "forget")


def add_admin_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    image = "e.g. alpine:3.20, ghcr.io/o/i:t, library/x@sha256:… (as clients pull it)"
    inspect = commands.add_parser(
        "inspect", parents=[common], help="is an image cached: platforms, layers, last use"
    )
    inspect.add_argument("image", metavar="IMAGE", help=image)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    refresh = commands.add_parser(
        "refresh", parents=[common], help="revalidate a tag with upstream now"
    )
    refresh.add_argument("image", metavar="IMAGE", help=image + "; a tag")
    refresh.add_argument("--json", action="store_true", help="machine-readable output")
    forget = commands.add_parser(
        "forget", parents=[common], help="remove a tag, or an image and what only it uses"
    )
    forget.add_argument("image", metavar="IMAGE", help=image)
    forget.add_argument(
        "--tag-only", action="store_true", help="remove the tag only, keep the image"
    )
    forget.add_argument("--json", action="store_true", help="machine-readable output")


@contextlib.asynccontextmanager
async def open_actions(settings: Settings) -> AsyncIterator[AdminActions]:
    """The admin actions over the cache of ``settings``, in this process (beside the
    server, or without one): the server's naming, a manifest policy of its own."""
    async with Cache(settings) as cache, contextlib.AsyncExitStack() as stack:
        sessions = Sessions.create(USER_AGENT)
        stack.push_async_callback(sessions.close)
        guard = StorageGuard()
        manifests = Manifests(
            cache.store,
            cache.index,
            Presence(RepoLinks(cache.index), guard),
            guard,
            on_stored=lambda _: None,
        )
        router = build_router(settings, sessions)
        yield AdminActions(cache, router, manifests, beside_server=True)


def run_admin(args: argparse.Namespace, settings: Settings) -> int:
    """Exit status: 0 done (``inspect``: completely cached), 1 not (fully) cached or the
    action failed (upstream, storage, another operator command running), 2 a usage
    error (not an image, a digest to refresh, a registry not mirrored)."""
    _log_actions(settings)
    who = f"{getpass.getuser()} (command line)"
    handlers: dict[str, Callable[[AdminActions], Awaitable[int]]] = {
        "inspect": lambda actions: _inspect(actions, args, who),
        "refresh": lambda actions: _refresh(actions, args, who),
        "forget": lambda actions: _forget(actions, args, who),
    }

    async def go() -> int:
        async with open_actions(settings) as actions:
            return await handlers[args.command](actions)

    try:
        return run_async(go())
    except (BadImage, NeedsTag, RegistryNotMirrored, RepositoryDenied) as exc:
        err.print(f"registry-mirror {args.command}: {exc}", highlight=False)
        return 2
    except (NotCached, RootLocked, UpstreamError) as exc:
        err.print(f"registry-mirror {args.command}: {_explain(exc)}", highlight=False)
        return 1


def _explain(exc: Exception) -> str:
    if isinstance(exc, UpstreamError):
        return f"upstream: {exc} (nothing changed)"
    return str(exc)


def _log_actions(settings: Settings) -> None:
    """The actions log who did what at INFO, to standard error."""
    logger = logging.getLogger("registry_mirror.maintenance.admin")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    level = {"warn": "WARNING"}.get(settings.log.level, settings.log.level.upper())
    logger.setLevel(min(logging.INFO, logging.getLevelName(level)))


def _dump(result: ImageReport | RefreshResult | ForgetResult) -> None:
    print(json.dumps(dataclasses.asdict(result), indent=2))


async def _inspect(actions: AdminActions, args: argparse.Namespace, who: str) -> int:
    report = await actions.inspect(args.image, who=who)
    status = 0 if report.complete else 1
    if args.json:
        _dump(report)
        return status
    name = f"{report.repository}:{report.tag}" if report.tag else report.repository
    if not report.cached:
        out.print(f"{name}: not cached" + (f" ({report.digest})" if report.digest else ""))
        return status
    out.print(f"{name}: {report.digest} ({report.media_type})", highlight=False)
    out.print(
        f"{report.blobs_cached} of {report.blobs} blobs cached,"
        f" {human_size(report.cached_bytes)} of {human_size(report.total_bytes)}"
        f"{'' if report.complete else ' (partial)'};"
        f" last use {local_time(report.last_use)}, {report.hits} hits"
        f"{'' if report.linked else '; cached through another repository'}",
        highlight=False,
    )
    table = Table()
    for column in ("platform", "manifest", "blob", "size", "cached"):
        table.add_column(column, justify="right" if column == "size" else "left", no_wrap=True)
    for manifest in report.manifests:
        platform = manifest.platform or "-"
        if manifest.blobs is None:
            table.add_row(platform, manifest.digest[:19], "-", "-", "no (manifest)")
            continue
        for blob in manifest.blobs:
            table.add_row(
                platform,
                manifest.digest[:19],
                blob.digest[:19],
                human_size(blob.size),
                "yes" if blob.cached else "no",
            )
    out.print(table)
    return status


async def _refresh(actions: AdminActions, args: argparse.Namespace, who: str) -> int:
    result = await actions.refresh(args.image, who=who)
    if args.json:
        _dump(result)
        return 0
    name = f"{result.repository}:{result.tag}"
    if result.changed:
        out.print(f"{name}: {result.old or 'not cached'} → {result.new}", highlight=False)
    else:
        out.print(f"{name}: unchanged, {result.new}", highlight=False)
    if result.fetched:
        out.print(f"{len(result.fetched)} manifests fetched from upstream", highlight=False)
    return 0


async def _forget(actions: AdminActions, args: argparse.Namespace, who: str) -> int:
    result = await actions.forget(args.image, who=who, tag_only=args.tag_only)
    if args.json:
        _dump(result)
        return 0
    if result.tags:
        out.print(f"untagged {', '.join(result.tags)}", highlight=False)
    if result.still_tagged:
        out.print(
            f"image {result.digest} kept: still tagged {', '.join(result.still_tagged)}",
            highlight=False,
        )
    elif not args.tag_only:
        out.print(
            f"removed {result.images} images: {result.files} files,"
            f" {human_size(result.freed)} ({result.freed} bytes)",
            highlight=False,
        )
    if result.kept or result.in_use:
        out.print(
            f"({result.kept} files kept: other images or repositories use them;"
            f" {result.in_use} being downloaded)",
            highlight=False,
        )
    return 0
