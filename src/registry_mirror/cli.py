"""The ``registry-mirror`` program: ``serve`` and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import re
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from registry_mirror import __version__
from registry_mirror.api.access import ACCESS_KEY
from registry_mirror.api.access_log import AccessLogger
from registry_mirror.api.scrape import SCRAPE_KEY, debug_app
from registry_mirror.api.server import CUT_WAIT, RegistryRunner
from registry_mirror.app import create_app
from registry_mirror.auth import HtpasswdError
from registry_mirror.config import ConfigError, Settings, flag_name, leaf_paths, load_settings
from registry_mirror.health import HEALTH_KEY
from registry_mirror.index import IndexFailure
from registry_mirror.logs import RequestIdFilter, formatter
from registry_mirror.maintenance import commands as commands_module
from registry_mirror.storage import StorageError

__all__ = ["main"]

log = logging.getLogger("registry_mirror")

# Short spellings of the most used settings.
SECOND_SIGNAL_AFTER: Final = 1.0  # seconds

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


def _raise_open_files_limit() -> None:
    """Every connection, cached file and staging file is a descriptor: raise the soft
    limit (often 1024) to the hard one, as Go programs do at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft in (resource.RLIM_INFINITY, hard):
        return
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # Linux's nr_open default
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open files limit from %d: %s", soft, exc)
        return
    log.debug("open files limit raised from %d to %d", soft, target)


def serve(settings: Settings, ignored: list[str]) -> int:
    _limit_malloc_arenas()
    _setup_logging(settings)
    _raise_open_files_limit()
    for key in ignored:
        log.info("config key %s is accepted for registry:2 compatibility and has no effect", key)
    try:
        uvloop.run(_serve(settings))
    except HtpasswdError as exc:
        print(f"registry-mirror: {exc}", file=sys.stderr)
        return 2
    except (StorageError, IndexFailure, OSError) as exc:
        print(f"registry-mirror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


class _MalformedRequestFilter(logging.Filter):
    """A malformed request (bad request line, too many or too long headers) is the
    client's mistake: one warning line, not a server error with a traceback. The parser's
    message quotes the offending bytes: credentials in them are redacted (the value of
    Authorization, Proxy-Authorization, Cookie and token-like headers, any
    ``Basic``/``Bearer`` credential), a fragment of an over-long line is left out, and
    control characters are escaped, so the record is one line that leaks nothing."""

    _SECRET_NAME = re.compile(
        r"(?i)(?:proxy-)?authori[sz]ation|(?:set-)?cookie|.*(?:token|secret|passw(?:or)?d"
        r"|api-?key|auth).*"
    )
    # A quoted header line: b'Name: value' (value up to the quote; repr escapes quotes).
    _QUOTED = re.compile(
        r"""(?P<q>b?['"])(?P<name>[^:'"\n]*?)(?P<sep>[ \t]*:[ \t]*)(?P<value>[^'"]*)"""
    )
    _SCHEME = re.compile(r"(?i)\b(basic|bearer|digest|negotiate|ntlm)(\s+)[^\s'\"]+")
    _FRAGMENT = re.compile(r"(?is)(when reading):.*")
    _CARET = re.compile(r"^\s*\^\s*$", re.M)

    @classmethod
    def _header(cls, match: re.Match[str]) -> str:
        name, value = match["name"], match["value"]
        # A value is kept only under a well-formed name that carries no secret.
        if re.fullmatch(r"[A-Za-z0-9-]+", name) is None or cls._SECRET_NAME.fullmatch(name):
            value = "<redacted>" if value else ""
        return f"{match['q']}{name}{match['sep']}{value}"

    @classmethod
    def describe(cls, message: str) -> str:
        text = cls._FRAGMENT.sub(r"\1 (content not logged)", message)
        text = cls._QUOTED.sub(cls._header, text)
        text = cls._SCHEME.sub(r"\1\2<redacted>", text)
        text = cls._CARET.sub("", text)
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
        return "".join(c if c.isprintable() else f"\\x{ord(c) & 0xFF:02x}" for c in text)[:300]

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed request refused: %s"
            record.args = (self.describe(str(exc.message)),)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _setup_logging(settings: Settings) -> None:
    """stderr, in the ``log.formatter``'s format; every record carries its request id."""
    level = {"warn": "WARNING"}.get(settings.log.level, settings.log.level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings.log.formatter))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level, handlers=[handler])
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


def _dual_stack_socket(host: str, port: int) -> socket.socket:
    """One listening socket for IPv4 and IPv6 (``:PORT``, ``[::]:PORT``, as registry:2
    and Go do). ``:PORT`` on a machine without IPv6 falls back to IPv4 alone."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        if host == "::":
            raise
        log.info("IPv6 is not available: listening on IPv4 only")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        return sock
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError:
        sock.close()
        raise
    return sock


async def _reload(tls: _TLS | None, app: web.Application) -> None:
    """``SIGHUP`` (``systemctl reload``, logrotate): re-read what can be re-read."""
    done = []
    if tls is not None:
        await tls.reload()
        done.append("TLS certificate")
    htpasswd = app[ACCESS_KEY].htpasswd
    if htpasswd is not None:
        await htpasswd.reload()
        done.append(f"htpasswd file ({htpasswd.users} users)")
    log.info(
        "SIGHUP: reloaded %s; the log goes to stderr, no log file to reopen",
        ", ".join(done) if done else "nothing (no TLS certificate, no htpasswd file)",
    )


async def _listen(
    runner: web.BaseRunner,
    host: str,
    port: int,
    where: str,
    *,
    backlog: int = 128,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve ``runner`` on ``host:port`` (``""`` and ``::``: one socket for IPv4 and
    IPv6); an OSError names ``where`` (the setting that asked for it)."""
    site: web.BaseSite
    try:
        if host in ("", "::"):
            sock = _dual_stack_socket(host, port)
            site = web.SockSite(runner, sock, backlog=backlog, ssl_context=ssl_context)
        else:
            site = web.TCPSite(
                runner, host, port, backlog=backlog, reuse_address=True, ssl_context=ssl_context
            )
        await site.start()
    except OSError as exc:
        raise OSError(f"cannot listen on {where}: {exc.strerror}") from None


async def _debug_listener(settings: Settings, app: web.Application) -> web.AppRunner | None:
    """registry:2's debug listener (``http.debug.addr``), serving the metrics at
    ``http.debug.prometheus.path``; None when not configured."""
    listen = settings.debug_listen()
    if listen is None:
        if settings.http.debug.addr is not None:
            log.info(
                "http.debug.addr is set without http.debug.prometheus.enabled: the debug"
                " listener would serve nothing, not started"
            )
        return None
    host, port = listen
    path = settings.http.debug.prometheus.path
    runner = web.AppRunner(debug_app(app[SCRAPE_KEY], path), access_log=None)
    await runner.setup()
    try:
        await _listen(runner, host, port, f"http.debug.addr {settings.http.debug.addr}")
    except OSError:
        await runner.cleanup()
        raise
    log.info("metrics on %s%s (debug listener)", settings.http.debug.addr, path)
    return runner


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
        shutdown_timeout=CUT_WAIT,
        keepalive_timeout=settings.http.idle_timeout,
        max_headers=settings.http.max_headers,
        max_field_size=settings.http.max_header_size,
        max_line_size=settings.http.max_header_size,
    )
    await runner.setup()
    stack = contextlib.AsyncExitStack()
    try:
        ssl_context = tls.server if tls is not None else None
        await _listen(runner, host, port, settings.http.addr, backlog=1024, ssl_context=ssl_context)
        log.info("listening on %s%s", settings.http.addr, " (TLS)" if tls else "")
        _exposure_warning(settings, host)
        debug = await _debug_listener(settings, app)
        if debug is not None:
            stack.push_async_callback(debug.cleanup)
        stop, cut = asyncio.Event(), asyncio.Event()
        received: list[tuple[str, float]] = []
        loop = asyncio.get_running_loop()

        def terminate(sig: signal.Signals) -> None:
            # A second signal cuts the drain short; one within a second of the first is
            # not counted: uvloop may hand the same signal over twice.
            if received and loop.time() - received[0][1] >= SECOND_SIGNAL_AFTER:
                log.warning("%s again: cutting the drain short", sig.name)
                cut.set()
            elif not received:
                received.append((sig.name, loop.time()))
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, terminate, sig)
        reloads: set[asyncio.Task[None]] = set()

        def hangup() -> None:
            task = asyncio.ensure_future(_reload(tls, app))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, hangup)
        await stop.wait()
        await _drain(app, runner, settings.http.draintimeout, received[0][0], cut)
    finally:
        await stack.aclose()
        await runner.cleanup()
    log.info("stopped")


async def _drain(
    app: web.Application, runner: RegistryRunner, grace: float, signal_name: str, cut: asyncio.Event
) -> None:
    """Not ready at once, then the runner's drain (which logs what it did)."""
    health = app[HEALTH_KEY]
    health.drain()
    log.info("%s: shutting down (another signal cuts what is under way)", signal_name)
    await runner.drain(grace, health.downloads, cut)


if __name__ == "__main__":
    sys.exit(main())
