"""The operator commands: ``ls``, ``du``, ``prune``, ``verify``, ``warm``, ``probe``, and
the admin actions ``inspect``, ``refresh``, ``forget`` (their own module,
``admin_commands``).

Thin shells over the operations of :mod:`registry_mirror.maintenance`: arguments in, a
table (or JSON) out, an exit status that scripts can use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from registry_mirror import maintenance as ops
from registry_mirror.config import Settings, parse_duration, parse_size
from registry_mirror.index import IndexFailure
from registry_mirror.maintenance import admin_commands
from registry_mirror.maintenance.console import err, human_size, local_time, out, run_async
from registry_mirror.media_types import Platform
from registry_mirror.reference import Digest
from registry_mirror.storage import StorageError

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS: Final = (
    "ls",
    "du",
    "prune",
    "verify",
    "warm",
    "probe",
    *admin_commands.ADMIN_COMMANDS,
)
PROBES: Final = ("readyz", "livez", "startupz")

T = TypeVar("T")


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    ls = commands.add_parser("ls", parents=[common], help="cached repositories and tags")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    du = commands.add_parser("du", parents=[common], help="storage used, quota, free disk")
    du.add_argument("--json", action="store_true", help="machine-readable output")
    prune = commands.add_parser("prune", parents=[common], help="remove cached images")
    prune.add_argument(
        "repositories",
        nargs="*",
        metavar="REPO",
        help="only these repositories, as ls shows them (alpine, library/alpine,"
        " ghcr.io/o/i; globs allowed)",
    )
    prune.add_argument("--dry-run", action="store_true", help="show what would go, remove nothing")
    prune.add_argument("-y", "--yes", action="store_true", help="do not ask before removing")
    prune.add_argument("--older-than", metavar="AGE", help="not used for this long (e.g. 30d)")
    prune.add_argument("--to-size", metavar="SIZE", help="LRU images until this size (20GiB)")
    verify = commands.add_parser("verify", parents=[common], help="re-hash the whole cache")
    verify.add_argument("--repair", action="store_true", help="remove what is unsound")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    warm = commands.add_parser("warm", parents=[common], help="pre-fetch images through a mirror")
    warm.add_argument("images", nargs="*", metavar="IMAGE", help="e.g. alpine:3.20, ghcr.io/o/i:t")
    warm.add_argument("-f", "--file", type=Path, help="a file of images, one per line")
    warm.add_argument("--platform", help="e.g. linux/amd64,linux/arm64 (default: all)")
    warm.add_argument("--mirror", help="the running mirror's URL (default: from http.addr)")
    warm.add_argument("--concurrency", type=int, default=4, help="parallel downloads (4)")
    warm.add_argument("-u", "--username", help="the mirror's login (auth.htpasswd)")
    secret = warm.add_mutually_exclusive_group()
    secret.add_argument(
        "-p", "--password", help="the password (visible to other users: prefer --password-stdin)"
    )
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    warm.add_argument(
        "--tls-verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="verify the mirror's certificate (default: yes)",
    )
    warm.add_argument("--ca-cert", type=Path, metavar="FILE", help="CA certificate(s), PEM")
    probe = commands.add_parser(
        "probe",
        parents=[common],
        help="ask the running mirror's health endpoint (a container healthcheck)",
    )
    probe.add_argument(
        "endpoint", nargs="?", choices=PROBES, default="readyz", help="which (readyz)"
    )
    probe.add_argument("--mirror", help="the running mirror's URL (default: from http.addr)")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds (5)")
    admin_commands.add_admin_commands(commands, common)


def run(args: argparse.Namespace, settings: Settings) -> int:
    handlers = {
        "ls": _ls,
        "du": _du,
        "prune": _prune,
        "verify": _verify,
        "warm": _warm,
        "probe": _probe,
        **dict.fromkeys(admin_commands.ADMIN_COMMANDS, admin_commands.run_admin),
    }
    try:
        return handlers[args.command](args, settings)
    except ops.CacheMissing as exc:
        err.print(f"registry-mirror: {exc}", highlight=False)
        return 2
    except ops.NothingMatches as exc:
        err.print(f"registry-mirror {args.command}: {exc}", highlight=False)
        return 1
    except ValueError as exc:
        err.print(f"registry-mirror {args.command}: {exc}", highlight=False)
        return 2
    except (IndexFailure, StorageError, OSError) as exc:
        err.print(f"registry-mirror {args.command}: {exc}", highlight=False)
        return 1


def _record(row: ops.RepoTag | ops.Problem) -> dict[str, object]:
    """A row for ``--json``: its fields in order, a digest as its text."""
    fields = ((field.name, getattr(row, field.name)) for field in dataclasses.fields(row))
    return {name: str(value) if isinstance(value, Digest) else value for name, value in fields}


def _ls(args: argparse.Namespace, settings: Settings) -> int:
    async def go() -> list[ops.RepoTag]:
        async with ops.Cache(settings) as cache:
            return ops.list_tags(await cache.index.snapshot())

    rows = run_async(go())
    if args.json:
        print(json.dumps([_record(r) for r in rows], indent=2))
        return 0
    table = Table(title=f"cached images in {settings.root}")
    for column in ("repository", "tag", "digest", "size", "last use", "hits"):
        table.add_column(
            column, justify="right" if column in ("size", "hits") else "left", no_wrap=True
        )
    for r in rows:
        size = human_size(r.size) + ("" if r.complete else " (partial)")
        table.add_row(
            r.repository, r.tag, str(r.digest)[:19], size, local_time(r.last_use), str(r.hits)
        )
    out.print(table)
    return 0


def _du(args: argparse.Namespace, settings: Settings) -> int:
    async def go() -> ops.UsageReport:
        async with ops.Cache(settings) as cache:
            return await ops.usage(cache)

    report = run_async(go())
    quota = settings.storage.quota
    if args.json:
        document = {
            **dataclasses.asdict(report),
            "quota_bytes": quota,
            "min_free_bytes": settings.storage.min_free,
        }
        print(json.dumps(document, indent=2))
        return 0
    table = Table(title=f"storage of {settings.root}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    used = human_size(report.disk_bytes)
    if quota:
        used += f" of {human_size(quota)} quota ({100 * report.disk_bytes / quota:.0f} %)"
    table.add_row("used on disk", used)
    table.add_row(
        "free on the filesystem",
        human_size(report.free_bytes)
        + (f" (keep {human_size(settings.storage.min_free)})" if settings.storage.min_free else ""),
    )
    table.add_row("content (indexed)", human_size(report.indexed_bytes))
    table.add_row("shared by several images", human_size(report.shared_bytes))
    table.add_row("unique to one image", human_size(report.unique_bytes))
    table.add_row("blobs / manifests", f"{report.blobs} / {report.manifests}")
    table.add_row("repositories", str(report.repositories))
    out.print(table)
    return 0


def _with_unit(text: str, what: str, parse: Callable[[str], T], examples: str) -> T:
    """A size or an age must say its unit: ``20`` could mean bytes or gigabytes."""
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", text):
        raise ValueError(f"{what} {text!r} needs a unit ({examples})")
    return parse(text)


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    older_than = (
        _with_unit(args.older_than, "--older-than", parse_duration, "e.g. 30d, 12h, 90m")
        if args.older_than
        else None
    )
    to_size = (
        _with_unit(args.to_size, "--to-size", parse_size, "e.g. 20GiB, 500MB, 0B")
        if args.to_size
        else None
    )
    if older_than is None and to_size is None and not args.repositories:
        raise ValueError("say what to prune: --older-than AGE, --to-size SIZE and/or REPO…")
    naming = ops.Naming.from_settings(settings)

    async def plan() -> ops.PrunePlan:
        async with ops.Cache(settings) as cache:
            return await ops.plan_prune(
                cache,
                older_than=older_than,
                to_size=to_size,
                repositories=list(args.repositories),
                naming=naming,
            )

    async def apply(chosen: ops.PrunePlan) -> ops.PruneResult:
        async with ops.Cache(settings) as cache:
            return await ops.prune(cache, chosen)

    chosen = run_async(plan())
    removal = chosen.removal
    verb = "would remove" if args.dry_run or not args.yes else "removing"
    out.print(
        f"{verb} {len(removal.images)} images: {len(removal.digests)} files,"
        f" {human_size(removal.freed)} ({removal.freed} bytes)",
        highlight=False,
    )
    for digest in removal.images:
        names = ", ".join(chosen.names.get(digest, [])) or "(untagged)"
        out.print(f"  {digest}  {names}", highlight=False)
    if chosen.unlink:
        out.print(
            f"{'would untag' if verb == 'would remove' else 'untagging'}"
            f" {', '.join(chosen.scope or [])} from {len(chosen.unlink)} files other"
            " repositories still use (they stay)",
            highlight=False,
        )
    if not chosen:
        out.print("nothing to remove", highlight=False)
        return 0
    if args.dry_run:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("not removing without confirmation: run with --yes (or --dry-run)")
        answer = input("remove them? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            out.print("nothing removed", highlight=False)
            return 0
    result = run_async(apply(chosen))
    out.print(
        f"removed {result.images} images: {result.files} files, {human_size(result.freed)}"
        f" ({result.freed} bytes)",
        highlight=False,
    )
    if result.kept:
        out.print(
            f"({result.kept} files kept: in use again since the plan was made)", highlight=False
        )
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    async def go(progress: Progress) -> tuple[list[ops.Problem], int]:
        async with ops.Cache(settings) as cache:
            snapshot = await cache.index.snapshot()
            total = sum(item.size for item in snapshot.items.values())
            task = progress.add_task("verifying", total=total)
            return await ops.verify(
                cache,
                repair=args.repair,
                progress=lambda n: progress.update(task, advance=n),
            )

    with _progress(disable=args.json) as progress:
        problems, hashed = run_async(go(progress))
    if args.json:
        print(
            json.dumps(
                {
                    "sound": not problems,
                    "hashed_bytes": hashed,
                    "repaired": args.repair,
                    "problems": [_record(p) for p in problems],
                },
                indent=2,
            )
        )
        return 1 if problems else 0
    if not problems:
        out.print(f"sound: {human_size(hashed)} re-hashed, no problem found", highlight=False)
        return 0
    table = Table(title=f"{len(problems)} problems" + (" (repaired)" if args.repair else ""))
    for column in ("kind", "digest", "detail"):
        table.add_column(column)
    for p in problems:
        table.add_row(p.kind, str(p.digest), p.detail)
    out.print(table)
    if not args.repair:
        out.print("run with --repair to remove them (they are fetched again when asked)")
    return 1


def _warm(args: argparse.Namespace, settings: Settings) -> int:
    images = list(args.images)
    if args.file is not None:
        lines = args.file.read_text().splitlines()
        images += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not images:
        raise ValueError("no images given (IMAGE… or -f FILE)")
    platforms = (
        [Platform.parse(p.strip()) for p in args.platform.split(",")] if args.platform else None
    )
    if args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    mirror = args.mirror or _local_url(settings)
    password = args.password
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if (password is not None) and args.username is None:
        raise ValueError("a password without --username")
    access = ops.MirrorAccess.parse(
        mirror,
        username=args.username,
        password=password,
        tls_verify=args.tls_verify,
        ca_cert=args.ca_cert,
    )
    access.ssl_context()  # a bad --ca-cert is a usage error, before anything starts

    with _progress(disable=False) as progress:
        task = progress.add_task(f"warming {len(images)} images", total=None)

        def done(result: ops.WarmResult) -> None:
            status = "[red]failed[/]" if result.error else "[green]ok[/]"
            progress.console.print(f"{status} {result.image}", highlight=False)

        results = run_async(
            ops.warm(
                access,
                images,
                platforms=platforms,
                concurrency=args.concurrency,
                on_bytes=lambda n: progress.update(task, advance=n),
                on_image=done,
            )
        )
    table = Table(title=f"warmed through {access.url}")
    for column in ("image", "platforms", "manifests", "blobs", "bytes", "result"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.image,
            ",".join(r.platforms) or "-",
            str(r.manifests),
            str(r.blobs),
            human_size(r.bytes),
            r.error or "ok",
        )
    out.print(table)
    failed = sum(1 for r in results if r.error)
    out.print(f"{len(results) - failed} of {len(results)} images warmed", highlight=False)
    return 1 if failed else 0


def _local_url(settings: Settings) -> str:
    """The running mirror's URL as this machine reaches it, from ``http.addr`` and
    ``http.tls``: a wildcard address is asked on loopback."""
    host, port = settings.listen()
    scheme = "https" if settings.http.tls.certificate is not None else "http"
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # dual-stack: IPv4 too
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _probe(args: argparse.Namespace, settings: Settings) -> int:
    """GET one health endpoint: exit 0 on 200, 1 otherwise, with its answer on stderr.
    A probe checks the process, not its identity: the certificate is not verified (the
    mirror's own, often self-signed or for another name than the loopback address)."""
    url = f"{(args.mirror or _local_url(settings)).rstrip('/')}/{args.endpoint}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as response:
            body = response.read(4096).decode(errors="replace").strip()
            out.print(f"{url}: {response.status} {body}", highlight=False, markup=False)
            return 0
    except urllib.error.HTTPError as exc:
        body = exc.read(4096).decode(errors="replace").strip()
        err.print(f"{url}: {exc.code} {body}", highlight=False, markup=False)
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        err.print(f"{url}: no answer: {reason}", highlight=False, markup=False)
    return 1


def _progress(*, disable: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=disable or not sys.stderr.isatty(),
        transient=True,
    )
