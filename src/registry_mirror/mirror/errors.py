"""Errors of the pull-through policy that the API turns into answers."""

from __future__ import annotations

__all__ = ["FillFailed", "TooManyFetches", "Uncacheable"]


class FillFailed(Exception):
    """The download behind a stream failed after bytes were sent: abort the response."""


class Uncacheable(Exception):
    """The store cannot take this blob now (disk full, I/O error): serve it uncached."""


class TooManyFetches(Exception):
    """The global cap on concurrent upstream downloads is reached; try again shortly."""

    retry_after = 5
