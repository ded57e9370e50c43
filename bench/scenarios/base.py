"""What a scenario is: the rows it declares, how it measures them, how they pass."""

from __future__ import annotations

from abc import ABC, abstractmethod

import httpx

from bench.blobs import FreshBlob
from bench.config import DIRECT_NAME, MIRROR_NAME, NGINX_NAME, REGISTRY_NAME, Config
from bench.context import Context
from bench.report import Row

__all__ = ["Rows", "Scenario", "push_fresh", "slug"]

Rows = dict[str, Row]  # a scenario's own rows by key


class Scenario(ABC):
    """One step of the benchmark, measured on both proxies.

    ``group`` is its name for ``--only`` (None: always run); ``phase`` names the memory
    checkpoint taken after it (None: none); ``needs_wrk``: without wrk its rows get an
    error instead of a measurement.
    """

    group: str | None
    phase: str | None
    needs_wrk: bool = False

    @abstractmethod
    def title(self, cfg: Config) -> str:
        """The heading printed before it runs."""

    @abstractmethod
    def rows(self, cfg: Config) -> list[Row]:
        """The rows it produces, in the order of the report."""

    @abstractmethod
    def run(self, ctx: Context, rows: Rows) -> None:
        """Measure both proxies, filling ``rows`` (values, details, errors)."""

    def evaluate(self, rows: Rows) -> None:
        """Set ``passed`` of the rows that have a target (only called when selected)."""
        del rows

    def notes(self, rows: Rows) -> list[str]:
        """Lines printed below the table."""
        del rows
        return []


def slug(name: str) -> str:
    """A short form of a server's name, for repository and file names."""
    return {
        MIRROR_NAME: "mirror",
        REGISTRY_NAME: "registry2",
        DIRECT_NAME: "direct",
        NGINX_NAME: "nginx",
    }[name]


def push_fresh(
    ctx: Context, rows: Rows, wanted: dict[str, tuple[str, int, int]]
) -> dict[str, list[FreshBlob]] | None:
    """Push the fresh blobs a scenario needs, before it measures anything.

    ``wanted``: for each server's name, (repository, size, how many). If the upstream
    refuses them, every row gets the error and None is returned.
    """
    try:
        blobs = {
            name: ctx.fresh.push_many(repo, size, count)
            for name, (repo, size, count) in wanted.items()
        }
    except (RuntimeError, httpx.HTTPError, OSError) as exc:
        for row in rows.values():
            row.errors.append(f"pushing fresh blobs to the upstream failed: {exc}")
        ctx.console.print(f"[red]  pushing fresh blobs to the upstream failed: {exc}[/]")
        return None
    ctx.upstream.clear_log()
    return blobs
