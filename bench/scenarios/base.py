"""What a scenario is: the rows it declares, how it measures them, how they pass."""

from __future__ import annotations

from abc import ABC, abstractmethod

from bench.config import Config
from bench.context import Context
from bench.report import Row

__all__ = ["Rows", "Scenario"]

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
