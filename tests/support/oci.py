"""The mirror's error answers: ``{"errors": [{"code": ..., "message": ..., "detail": ...}]}``.

Every check of an error body goes through :func:`oci_error_codes`, which fails unless the
body is exactly that shape (JSON, a non-empty list of errors with exactly those three keys,
a code and a message that say something, no traceback)::

    assert_oci_error(response, 404, "MANIFEST_UNKNOWN")
    assert error_code(response) == "UNKNOWN"
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["assert_oci_error", "error_code", "error_codes", "error_detail", "oci_error_codes"]


def oci_error_codes(content_type: str, body: bytes) -> list[str]:
    """The codes of an OCI error body, from its raw ``Content-Type`` and bytes."""
    assert content_type.startswith("application/json"), (content_type, body[:500])
    document = json.loads(body)
    assert isinstance(document, dict) and set(document) == {"errors"}, document
    errors = document["errors"]
    assert isinstance(errors, list) and errors, document
    for error in errors:
        assert isinstance(error, dict) and set(error) == {"code", "message", "detail"}, document
        assert isinstance(error["code"], str) and error["code"], document
        assert isinstance(error["message"], str) and error["message"], document
    assert b"Traceback" not in body
    return [error["code"] for error in errors]


def error_codes(response: httpx.Response) -> list[str]:
    """Every code of the response's OCI error body (see :func:`oci_error_codes`)."""
    return oci_error_codes(response.headers.get("Content-Type", ""), response.content)


def error_code(response: httpx.Response) -> str:
    """The (first) code of the response's OCI error body."""
    return error_codes(response)[0]


def error_detail(response: httpx.Response) -> Any:
    """The ``detail`` of the (first) error, once the body is known to be an OCI error."""
    error_codes(response)
    return json.loads(response.content)["errors"][0]["detail"]


def assert_oci_error(response: httpx.Response, status: int, code: str) -> None:
    """The answer is ``status`` with an OCI error body whose only code is ``code``."""
    assert response.status_code == status, (response.status_code, response.text[:2000])
    assert error_codes(response) == [code], response.text[:2000]
