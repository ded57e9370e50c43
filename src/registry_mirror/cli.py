"""The ``registry-mirror`` program: ``serve`` and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from registry_mirror import __version__
from registry_mirror import commands as commands_module
from registry_mirror.api.access_log import AccessLogger
from registry_mirror.api.server import RegistryRunner
from registry_mirror.app import create_app
from registry_mirror.auth import HtpasswdError
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
    "http.tls.certificate": ["--tls-cert"],
    "http.tls.key": ["--tls-key"],
}


def _settings_options() -> argparse.ArgumentParser:
    """The config file and every setting as a flag, shared by all commands. They go
    before or after the command (``registry-mirror --root X ls`` = ``ls --root X``);
    unset flags leave no attribute, so one given before the command is not undone by
    the command's own parser."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        dest="config_flag",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML config file (registry:2's format)",
    )
    group = parent.add_argument_group("settings (each also REGISTRY_MIRROR_<KEY>)")
    for path in leaf_paths():
        group.add_argument(
            flag_name(path),
            *ALIASES.get(path, []),
            dest=f"set:{path}",
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=f"config key {path}",
        )
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _settings_options()
    parser = argparse.ArgumentParser(
        prog="registry-mirror",
        description="A pull-through cache for container registries."
        " Settings may be given before or after the command.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"registry-mirror {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", parents=[common], help="run the mirror (the default)")
    serve.add_argument(
        "config", nargs="?", type=Path, help="YAML config file (registry:2's format)"
    )
    commands_module.add_commands(commands, common)
    return parser


COMMANDS: Final = frozenset({"serve", *commands_module.COMMANDS})
NO_VALUE: Final = frozenset({"-h", "--help", "--version"})


def _with_command(argv: list[str]) -> list[str]:
    """``argv`` with ``serve`` in front when it names no command. Every option before
    the command takes one value (``--root X`` or ``--root=X``), so the first word that
    is not an option or an option's value is the command, or serve's CONFIG."""
    position = 0
    while position < len(argv):
        word = argv[position]
        if word in COMMANDS or word in NO_VALUE:
            return argv
        if word == "--" or not word.startswith("-"):
            break
        position += 1 if "=" in word else 2
    return ["serve", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_with_command(list(argv if argv is not None else sys.argv[1:])))
    config_file = getattr(args, "config_flag", None) or getattr(args, "config", None)
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
    MiB for nothing. Two arenas are plenty for one event loop and its helpers. A fixed
    mmap threshold keeps chunk buffers (256 KiB) in mmap, returned to the system when
    freed, instead of letting glibc raise the threshold and fragment the heap."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def serve(settings: Settings, ignored: list[str]) -> int:
    _limit_malloc_arenas()
    _setup_logging(settings)
    for key in ignored:
        log.info("config key %s is accepted for registry:2 compatibility and has no effect", key)
    try:
        uvloop.run(_serve(settings))
    except HtpasswdError as exc:
        print(f"registry-mirror: {exc}", file=sys.stderr)
        return 2
    except (StorageError, IndexError_, OSError) as exc:
        print(f"registry-mirror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


class _MalformedRequestFilter(logging.Filter):
    """A malformed request (bad request line, too many or too long headers) is the
    client's mistake: one warning line, not a server error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed request refused: %s"
            record.args = (str(exc.message).strip()[:200],)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _setup_logging(settings: Settings) -> None:
    level = {"warn": "WARNING"}.get(settings.log.level, settings.log.level.upper())
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(level)
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequestFilter())


class _TLS:
    """The server's TLS context, re-read on SIGHUP without dropping connections: the
    listening context hands each new handshake the newest certificate (SNI callback);
    established connections keep theirs."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.certificate = certificate
        self.key = key
        self.current = self._load()
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.load_cert_chain(certificate, key)
        self.server.sni_callback = self._choose

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.certificate, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot load TLS certificate {self.certificate}: {exc}") from None
        return context

    def _choose(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self.current

    async def reload(self) -> None:
        try:
            self.current = await asyncio.to_thread(self._load)
        except OSError as exc:
            log.error("%s; keeping the previous certificate", exc)
            return
        log.info("TLS certificate reloaded from %s", self.certificate)


def _exposure_warning(settings: Settings, host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and settings.auth.htpasswd.path is None and not settings.access.allow:
        log.warning(
            "listening on %s with no authentication and no network allow list: anybody who"
            " can reach it can pull every cached image (set auth.htpasswd or access.allow)",
            settings.http.addr,
        )


async def _serve(settings: Settings) -> None:
    app = create_app(settings)
    host, port = settings.listen()
    tls = None
    if settings.http.tls.certificate is not None and settings.http.tls.key is not None:
        tls = await asyncio.to_thread(_TLS, settings.http.tls.certificate, settings.http.tls.key)
    runner = RegistryRunner(
        app,
        access_log_class=AccessLogger,
        handle_signals=False,
        keepalive_timeout=settings.http.idle_timeout,
        max_headers=settings.http.max_headers,
        max_field_size=settings.http.max_header_size,
        max_line_size=settings.http.max_header_size,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            host,
            port,
            backlog=1024,
            reuse_address=True,
            ssl_context=tls.server if tls is not None else None,
        )
        try:
            await site.start()
        except OSError as exc:
            raise OSError(f"cannot listen on {settings.http.addr}: {exc.strerror}") from None
        log.info("listening on %s%s", settings.http.addr, " (TLS)" if tls else "")
        _exposure_warning(settings, host)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()
        if tls is not None:

            def reload() -> None:
                task = asyncio.ensure_future(tls.reload())
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, reload)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
