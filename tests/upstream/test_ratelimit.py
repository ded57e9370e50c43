"""Docker Hub's rate limit headers (``ratelimit-limit: 100;w=21600``) read into numbers."""

from __future__ import annotations

import pytest

from registry_mirror.upstream.responses import parse_ratelimit


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("100;w=21600", (100, 21600)),
        ("76;w=21600", (76, 21600)),
        ("0;w=21600", (0, 21600)),
        ("5000;w=3600", (5000, 3600)),
        ("200", (200, None)),
        (" 100 ; w=21600 ", (100, 21600)),
        ('100;w="60"', (100, 60)),
        ("100;burst=5;w=60", (100, 60)),
        ("100;W=60", (100, 60)),
        ("100, 5000;w=3600", (100, None)),  # a list of policies: the first one
        ("100;w=", (100, None)),
        ("100;w=abc", (100, None)),
        ("", None),
        (None, None),
        ("abc;w=60", None),
        ("-1;w=60", None),
        ("1e3", None),
        ("\u0661\u0660\u0660;w=60", None),  # digits, but not ASCII ones
        ("9" * 16, None),
        ("1;w=" + "9" * 300, None),
    ],
)
def test_ratelimit_header(header: str | None, parsed: tuple[int, int | None] | None) -> None:
    assert parse_ratelimit(header) == parsed
