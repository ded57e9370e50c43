"""The benchmark's own error."""

from __future__ import annotations

from typing import Any

__all__ = ["BenchError"]


class BenchError(RuntimeError):
    """A measurement could not be made or produced wrong results (``details``: what was seen)."""

    def __init__(
        self, message: str, details: dict[str, Any] | None = None, value: float | None = None
    ) -> None:
        super().__init__(message)
        self.details = details or {}
        self.value = value  # the figure measured despite the failure, if any
