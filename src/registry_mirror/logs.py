"""Logging: the formats (``log.formatter``: text, json, logstash), the request id that
ties a request's lines together, and a throttle for recurring conditions.

The request id lives in a context variable, set by the root application's middleware
for each request: what runs for that request — and tasks it starts, such as a blob
download another client then follows (a task copies its creator's context) — logs
under it. A record's structured fields travel as two attributes: ``fields`` (appended
to a text line as ``key=value``, fields of a JSON object) and ``line_fields`` (already
in the text of the message; fields of a JSON object only).
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from typing import Final, Literal

__all__ = [
    "REQUEST_ID",
    "JsonFormatter",
    "RequestIdFilter",
    "RequestIds",
    "TextFormatter",
    "ThrottledLog",
    "accepted_request_id",
    "formatter",
]

#: The id of the request being handled, None outside of one (start-up, the evictor).
REQUEST_ID: Final = contextvars.ContextVar[str | None]("request_id", default=None)
MAX_REQUEST_ID: Final = 64
_ACCEPTABLE_ID: Final = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_REQUEST_ID - 1}}}")
_QUOTED: Final = frozenset(' "=\\')  # a text field's value with one of them is quoted

Format = Literal["text", "json", "logstash"]


class RequestIds:
    """Request ids of one server: a random prefix drawn at start and a counter, e.g.
    ``5f0c9a1e-2b``: unique across restarts, cheap to make (no randomness per request)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._count = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._count):x}"


def accepted_request_id(value: str | None) -> str | None:
    """A request id sent by a trusted proxy, if it is one: 1 to 64 characters of
    letters, digits and ``. _ : -``, starting with a letter or digit. Anything else is
    not used (a new id is made instead), so a log line never carries a stranger's text."""
    if value is None or len(value) > MAX_REQUEST_ID:
        return None
    return value if _ACCEPTABLE_ID.fullmatch(value) else None


class RequestIdFilter(logging.Filter):
    """On the handler: every record gets ``request_id``, the one of the request it was
    logged for (None outside of a request), unless it carries its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the record's ``fields`` and its request id
    as ``key=value`` (a value with a space or a quote in JSON quotes). The date and time
    of a second are formatted once, not for every record of that second (an access log
    line per request)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second: tuple[int, str] = (-1, "")  # replaced whole: threads log too

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached, text = self._second
        if cached != second:
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        if self.default_msec_format:
            text = self.default_msec_format % (text, record.msecs)
        return text

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields: Mapping[str, object] | None = getattr(record, "fields", None)
        request_id = getattr(record, "request_id", None)
        if not fields and request_id is None:
            return line
        parts = [line]
        if fields:
            for key, value in fields.items():
                text = value if type(value) is str else str(value)
                if not (text and text.isprintable() and _QUOTED.isdisjoint(text)):
                    text = json.dumps(text)
                parts.append(f"{key}={text}")
        if request_id is not None:
            parts.append(f"request_id={request_id}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the record's structured fields, ``request_id`` when logged for a
    request, ``exception`` with the traceback if any. ``logstash`` adds the
    ``@timestamp`` and ``@version`` logstash's ``json_lines`` codec reads."""

    def __init__(self, *, logstash: bool = False) -> None:
        super().__init__()
        self.logstash = logstash
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        second = int(created)
        cached, text = self._second
        if cached != second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        stamp = self._time(record.created)
        out: dict[str, object] = {
            "time": stamp,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.logstash:
            out["@timestamp"] = stamp
            out["@version"] = "1"
        line_fields: Mapping[str, object] | None = getattr(record, "line_fields", None)
        if line_fields:
            out.update(line_fields)
        fields: Mapping[str, object] | None = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def formatter(name: Format) -> logging.Formatter:
    """The formatter ``log.formatter`` names."""
    if name == "text":
        return TextFormatter()
    return JsonFormatter(logstash=name == "logstash")


class ThrottledLog:
    """Log a recurring condition once per ``interval`` (say, a full disk), with a count
    of the occurrences in between, instead of once per request."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._last) > 10_000:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        suffix = f" ({suppressed} more since last logged)" if suppressed else ""
        self._logger.log(level, message + suffix, *args)
