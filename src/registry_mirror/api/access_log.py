"""The access log: one line per request, with the client (as the access policy sees it,
behind trusted proxies), the user, the body bytes really sent, and what the request was:
its kind, registry and repository, the cache result (the mirror's :class:`Outcome`,
which the metrics count too) and its request id.

aiohttp's own ``%b`` counts only bytes written through the response object, not
those sent with ``sendfile`` (every cache hit), so the count is kept here.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from registry_mirror.api.access import CLIENT, USER
from registry_mirror.api.errors import KIND, REQUEST_ID_KEY
from registry_mirror.outcome import Outcome

__all__ = ["BODY_BYTES", "OUTCOME", "REQUEST_ID_KEY", "AccessLogger", "printable", "sent_bytes"]

BODY_BYTES: Final = web.RequestKey("body_bytes", int)  # body bytes sent, when counted
OUTCOME: Final = web.RequestKey("outcome", Outcome)  # a registry request's, from the mirror
LINE: Final = '%s %s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"'


def sent_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The body bytes of the answer: as counted while sending (blobs), else as known."""
    sent: int | None = request.get(BODY_BYTES)
    if sent is not None:
        return sent
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    if isinstance(response, web.Response) and response.content_length is not None:
        return response.content_length
    length: int = response.body_length
    return length  # aiohttp counts the headers in too; the best figure there is


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
    request refused before the access policy ran), the user ``-`` when anonymous. Then,
    as fields (``key=value`` on a text line, keys of a JSON object): ``kind``, and for a
    repository's request ``registry``, ``repository`` and ``cache`` (the result, once
    known); the request id. In JSON the line's own parts are fields too."""

    @property
    def enabled(self) -> bool:
        """Below INFO nothing is logged: aiohttp then neither times requests nor calls
        :meth:`log` (asked once per connection)."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        sent = sent_bytes(request, response)
        client = request.get(CLIENT) or request.remote or "-"
        user = request.get(USER)
        shown_user = "-" if not user else printable(user, 100).replace(" ", "\\x20")
        agent = printable(request.headers.get("User-Agent", "-"))
        target = str(request.rel_url)
        message = LINE % (
            client,
            shown_user,
            request.method,
            target,
            request.version.major,
            request.version.minor,
            response.status,
            sent,
            time,
            agent,
        )
        fields: dict[str, object] = {"kind": request.get(KIND) or "other"}
        outcome = request.get(OUTCOME)
        if outcome is not None:
            fields["registry"] = outcome.registry
            fields["repository"] = outcome.repository
            if outcome.result is not None:
                fields["cache"] = outcome.result.value
        # The record Logger.info would make, formatted already and without the search for
        # the calling frame (no format of this program shows it): one per request.
        logger = self.logger
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (), None)
        record.fields = fields
        record.line_fields = {
            "client": client,
            "user": user,
            "method": request.method,
            "target": target,
            "status": response.status,
            "bytes": sent,
            "duration": round(time, 6),
            "user_agent": agent,
        }
        record.request_id = request.get(REQUEST_ID_KEY)
        logger.handle(record)
