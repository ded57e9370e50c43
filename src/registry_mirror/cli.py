"""The ``registry-mirror`` program: ``serve`` and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop
from aiohttp import web

from registry_mirror import __version__
from registry_mirror import commands as commands_module
from registry_mirror.api.access_log import AccessLogger
from registry_mirror.app import create_app
from registry_mirror.config import ConfigError, Settings, flag_name, leaf_paths, load_settings
from registry_mirror.index import IndexError_
from registry_mirror.storage import StorageError

__all__ = ["main"]

log = logging.getLogger("registry_mirror")

# Short spellings of the most used settings.
ALIASES = {
    "http.addr": ["--addr"],
    "proxy.remoteurl": ["--upstream"],
    "storage.filesystem.rootdirectory": ["--root"],
}


def _settings_options() -> argparse.ArgumentParser:
    """The config file and every setting as a flag, shared by all commands."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        dest="config_flag",
        type=Path,
        metavar="FILE",
        help="YAML config file (registry:2's format)",
    )
    group = parent.add_argument_group("settings (each also REGISTRY_MIRROR_<KEY>)")
    for path in leaf_paths():
        group.add_argument(
            flag_name(path),
            *ALIASES.get(path, []),
            dest=f"set:{path}",
            metavar="VALUE",
            default=None,
            help=f"config key {path}",
        )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry-mirror",
        description="A pull-through cache for container registries.",
    )
    parser.add_argument("--version", action="version", version=f"registry-mirror {__version__}")
    common = _settings_options()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", parents=[common], help="run the mirror (the default)")
    serve.add_argument(
        "config", nargs="?", type=Path, help="YAML config file (registry:2's format)"
    )
    commands_module.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(argv if argv is not None else sys.argv[1:])
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    config_file = args.config_flag or getattr(args, "config", None)
    try:
        settings, ignored = load_settings(flags=_flags(args), config_file=config_file)
    except ConfigError as exc:
        print(f"registry-mirror: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings, ignored)
    return commands_module.run(args, settings)


def _flags(args: argparse.Namespace) -> dict[str, object]:
    return {
        key.removeprefix("set:"): value
        for key, value in vars(args).items()
        if key.startswith("set:") and value is not None
    }


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core),
    which keeps freed memory per thread: with file I/O in worker threads that is tens of
    MiB for nothing. Two arenas are plenty for one event loop and its helpers."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def serve(settings: Settings, ignored: list[str]) -> int:
    _limit_malloc_arenas()
    _setup_logging(settings)
    for key in ignored:
        log.info("config key %s is accepted for registry:2 compatibility and has no effect", key)
    try:
        uvloop.run(_serve(settings))
    except (StorageError, IndexError_, OSError) as exc:
        print(f"registry-mirror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _setup_logging(settings: Settings) -> None:
    level = {"warn": "WARNING"}.get(settings.log.level, settings.log.level.upper())
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(level)


async def _serve(settings: Settings) -> None:
    app = create_app(settings)
    host, port = settings.listen()
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        handle_signals=False,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"cannot listen on {settings.http.addr}: {exc.strerror}") from None
        log.info("listening on %s", settings.http.addr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
