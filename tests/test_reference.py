"""The reference grammar, checked by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_mirror.reference import (
    InvalidReference,
    parse_digest,
    parse_reference,
    parse_repo_name,
    parse_tag,
)


@pytest.mark.parametrize(
    "name", ["alpine", "library/alpine", "a/b/c", "my-org/my_app", "x.y/z__w", "a0/b-1"]
)
def test_valid_names(name: str) -> None:
    assert parse_repo_name(name).value == name


@pytest.mark.parametrize(
    "name", ["", "Alpine", "a//b", "/a", "a/", "../etc", "a/../b", "a b", "a%2fb", "-a", "a" * 256]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_repo_name(name)
    assert info.value.code == "NAME_INVALID"


def test_tags_and_digests() -> None:
    assert parse_tag("v1.2.3-rc_1").value == "v1.2.3-rc_1"
    assert str(parse_reference("sha256:" + "a" * 64)) == "sha256:" + "a" * 64
    assert parse_digest("sha512:" + "b" * 128).algorithm == "sha512"
    for bad in ("", ".hidden", "-x", "t" * 129, "a/b"):
        with pytest.raises(InvalidReference):
            parse_tag(bad)
    for bad in ("sha256:" + "A" * 64, "sha256:abc", "md5:" + "0" * 32, "sha256" + "0" * 64):
        with pytest.raises(InvalidReference):
            parse_digest(bad)


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_anything_accepted_is_a_safe_path(text: str) -> None:
    """Whatever passes validation can be used in a path or URL without escaping."""
    try:
        name = parse_repo_name(text)
    except InvalidReference as exc:
        assert exc.code == "NAME_INVALID"
        return
    parts = name.value.split("/")
    assert all(part and part not in (".", "..") for part in parts)
    assert all(c.islower() or c.isdigit() or c in "._-/" for c in name.value)
    assert len(name.value) <= 255


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_references_never_raise_anything_else(text: str) -> None:
    try:
        parsed = parse_reference(text)
    except InvalidReference as exc:
        assert exc.code in ("TAG_INVALID", "DIGEST_INVALID")
        return
    assert str(parsed) == text
