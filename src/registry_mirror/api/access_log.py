"""The access log: one line per request, with the body bytes really sent.

aiohttp's own ``%b`` counts only bytes written through the response object, not
those sent with ``sendfile`` (every cache hit), so the count is kept here.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["BODY_BYTES", "AccessLogger"]

BODY_BYTES: Final = "registry_mirror.body_bytes"


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        sent = request.get(BODY_BYTES)
        if sent is None:
            if request.method == "HEAD" or response.status in (204, 304):
                sent = 0
            elif isinstance(response, web.Response) and response.content_length is not None:
                sent = response.content_length
            else:  # aiohttp counts the headers in too; the best figure there is
                sent = response.body_length
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"',
            request.remote,
            request.method,
            request.rel_url,
            request.version.major,
            request.version.minor,
            response.status,
            sent,
            time,
            request.headers.get("User-Agent", "-")[:200],
        )
