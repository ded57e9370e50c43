"""The access log: one line per request, with the client (as the access policy sees it,
behind trusted proxies), the user, and the body bytes really sent.

aiohttp's own ``%b`` counts only bytes written through the response object, not
those sent with ``sendfile`` (every cache hit), so the count is kept here.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from registry_mirror.api.access import CLIENT, USER

__all__ = ["BODY_BYTES", "AccessLogger", "printable"]

BODY_BYTES: Final = web.RequestKey("body_bytes", int)  # body bytes sent, when counted
LINE: Final = '%s %s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"'


def printable(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, with quotes, backslashes and control
    characters escaped: a field of a one-line record that says what it was."""
    text = text[:limit]
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the usual case, without a loop in Python
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")
    return "".join(out)


class AccessLogger(AbstractAccessLogger):
    """``client user "METHOD target HTTP/x.y" status bytes seconds "user agent"``; the
    client is the address from the trusted ``X-Forwarded-For`` chain (the peer for a
    request refused before the access policy ran), the user ``-`` when anonymous."""

    @property
    def enabled(self) -> bool:
        """Below INFO nothing is logged: aiohttp then neither times requests nor calls
        :meth:`log` (asked once per connection)."""
        return self.logger.isEnabledFor(logging.INFO)

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
        client = request.get(CLIENT) or request.remote or "-"
        user = request.get(USER) or "-"
        message = LINE % (
            client,
            printable(user, 100).replace(" ", "\\x20"),
            request.method,
            request.rel_url,
            request.version.major,
            request.version.minor,
            response.status,
            sent,
            time,
            printable(request.headers.get("User-Agent", "-")),
        )
        # The record Logger.info would make, formatted already and without the search for
        # the calling frame (no format of this program shows it): one per request.
        logger = self.logger
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (), None))
