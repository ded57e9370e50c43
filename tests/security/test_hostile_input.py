"""Hostile clients: property-based requests against the real mirror process.

Whatever a client sends (repository names with ``..``, ``%2e``, unicode or thousands of
characters; junk references, ``Range``, ``Accept`` and query strings; any method; requests
the HTTP parser itself refuses), the mirror must answer with a 4xx and the OCI error body
(``{"errors":[{"code","message","detail"}]}``), never a 500, never a traceback in its log,
never write outside its storage root, never ask the upstream anything for input the
reference grammar rejects, and hold no more descriptors, threads or memory after each test
than before the attack (the resource oracle, reading /proc).

Hypothesis cannot use function-scoped fixtures per example, so one module-scoped
environment (a real upstream registry and one mirror process) serves every example.
Requests go out through ``httpcore`` (httpx's transport): unlike ``httpx.URL`` it sends the
request target byte for byte, so literal ``..`` segments reach the mirror unnormalised.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpcore
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.internal import observability
from yarl import URL

from registry_mirror.config import DOCKER_HUB_HOSTS
from registry_mirror.reference import (
    InvalidReference,
    parse_digest,
    parse_reference,
    parse_repo_name,
)
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.oci import oci_error_codes
from tests.support.registry import RegistryProcess
from tests.support.resources import Resources, assert_returns_to_baseline, resources

REPO = "library/alpine"
READ_METHODS = ("GET", "HEAD")
# Methods the HTTP parser (llhttp) accepts: everything else is refused before the mirror's
# code runs (see test_requests_the_http_parser_refuses_get_an_oci_error).
PARSEABLE_METHODS = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "SEARCH",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
    "QUERY",
    "ACL",
    "BIND",
    "REBIND",
    "UNBIND",
)
MAX_TARGET = 7900  # the mirror's request-line limit is 8190 bytes; beyond is the parser's job
MAX_HEADER_VALUE = 7000

# ---------------------------------------------------------------------- case counting

#: Examples whose body ran, per test function (the body counts itself).
CASES: Counter[str] = Counter()
#: Test cases Hypothesis reports having run (its observability callback), per test function.
OBSERVED: Counter[str] = Counter()


def _observe(observation: Any) -> None:
    if observation.type == "test_case" and observation.status != "gave_up":
        # Under pytest the property is the node id: ``path::test_name``.
        OBSERVED[observation.property.rsplit("::", 1)[-1]] += 1


def _count(name: str) -> None:
    CASES[name] += 1


# ---------------------------------------------------------------------- the environment


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Env:
    """The upstream, the mirror and a connection pool; a plain class, so Hypothesis shows
    it by its short repr instead of pretty-printing every field for every example."""

    def __init__(
        self,
        base: Path,
        upstream: RegistryProcess,
        mirror: MirrorProcess,
        image: PushedImage,
        pool: httpcore.ConnectionPool,
    ) -> None:
        self.base = base
        self.upstream = upstream
        self.mirror = mirror
        self.image = image
        self.blob_digest = image.layer_digests[0]
        self.blob = image.blobs[self.blob_digest]
        self.pool = pool
        self.outside: set[str] = set()
        self.log_offset = 0
        self.baseline: Resources | None = None  # the mirror's, once its cache is warm

    def __repr__(self) -> str:
        return f"<Env mirror={self.mirror.url} upstream={self.upstream.url}>"

    # --- requests ---------------------------------------------------------------

    def send(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ) -> Reply:
        """One request, the target sent exactly as given (it must be printable ASCII)."""
        url = httpcore.URL(
            scheme=b"http", host=b"127.0.0.1", port=self.mirror.port, target=target.encode()
        )
        sent = [(b"Host", self.mirror.host.encode()), *(headers or [])]
        if body:
            sent.append((b"Content-Length", str(len(body)).encode()))
        response = self.pool.request(
            method.encode(),
            url,
            headers=sent,
            content=body or None,
            extensions={"timeout": {"connect": 5.0, "read": 30.0, "write": 5.0, "pool": 5.0}},
        )
        names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
        return Reply(response.status, names, response.content)

    # --- checks -----------------------------------------------------------------

    def read_log(self) -> str:
        """The mirror's log lines since the last read."""
        with self.mirror.log_path.open("rb") as f:
            f.seek(self.log_offset)
            new = f.read()
        self.log_offset += len(new)
        return new.decode(errors="replace")

    def check_log(self, text: str | None = None) -> None:
        """Nothing alarming in the mirror's log since the last read (or in ``text``)."""
        text = self.read_log() if text is None else text
        assert_log_quiet(text, tail=4000)

    def check_files(self) -> None:
        """No file appeared outside the storage root; nothing inside it leads out of it."""
        assert outside_listing(self) == self.outside
        root = self.mirror.root.resolve()
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                resolved = (Path(dirpath) / name).resolve()
                assert resolved.is_relative_to(root), f"{dirpath}/{name} -> {resolved}"

    @contextlib.contextmanager
    def own_log(self) -> Iterator[None]:
        """For a test that is not a property: checks only its own log lines, and whatever
        it leaves there (failing or not) is not blamed on the next test."""
        self.log_offset = self.mirror.log_size()
        try:
            yield
            self.check_log()
        finally:
            self.log_offset = self.mirror.log_size()

    @contextlib.contextmanager
    def upstream_untouched(self, expect: bool) -> Iterator[None]:
        """With ``expect``: the upstream gets no request during the block."""
        if expect:
            self.upstream.clear_log()
        yield
        if expect:
            seen = [(r.method, r.path, r.query) for r in self.upstream.requests()]
            assert seen == [], f"invalid input reached the upstream: {seen}"


def outside_listing(env: Env) -> set[str]:
    """Every path under ``env.base`` except the mirror's root and the upstream's files."""
    skip = {env.mirror.root, env.upstream.workdir}
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(env.base):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            found.add(str((here / name).relative_to(env.base)))
    return found


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("hostile-input")
    # The root three levels down: a path escaping it by up to three ``..`` stays in ``base``.
    sandbox = base / "a" / "b" / "sandbox"
    sandbox.mkdir(parents=True)
    collect_coverage = observability.OBSERVABILITY_COLLECT_COVERAGE
    observability.OBSERVABILITY_COLLECT_COVERAGE = False  # a settrace per example: slow
    observability.add_observability_callback(_observe)
    pool = httpcore.ConnectionPool(max_connections=4)
    with RegistryProcess(base / "upstream") as upstream:
        image = push_image(upstream.url, REPO, "latest", layers=[3000])
        with MirrorProcess(sandbox / "cache", upstream.url) as mirror:
            environment = Env(base, upstream, mirror, image, pool)
            # Warm the cache: the blob (for ranges) and the manifest.
            blob = f"/v2/{REPO}/blobs/{environment.blob_digest}"
            assert environment.send("GET", blob).status == 200
            accept = [(b"Accept", MANIFEST_ACCEPT.encode())]
            assert environment.send("GET", f"/v2/{REPO}/manifests/latest", accept).status == 200
            environment.outside = outside_listing(environment)
            environment.baseline = resources(mirror.pid)
            try:
                yield environment
                environment.check_log()
                environment.check_files()
                assert_returns_to_baseline(mirror.pid, environment.baseline)
            finally:
                pool.close()
                observability.remove_observability_callback(_observe)
                observability.OBSERVABILITY_COLLECT_COVERAGE = collect_coverage
    _report_cases(request)


@pytest.fixture(autouse=True)
def _resources_come_back(env: Env) -> Iterator[None]:
    """After every test (all its examples): the mirror is back at its warm baseline (up to
    the few keep-alive connections of the client's pool)."""
    yield
    assert env.baseline is not None
    assert_returns_to_baseline(env.mirror.pid, env.baseline)


def _report_cases(request: pytest.FixtureRequest) -> None:
    total = sum(CASES.values())
    per_test = ", ".join(f"{name.removeprefix('test_')} {n}" for name, n in sorted(CASES.items()))
    line = f"hostile input: {total} cases ({per_test})"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)
    for name, n in CASES.items():
        assert OBSERVED[name] == n, f"{name}: body ran {n} times, Hypothesis ran {OBSERVED[name]}"


# ---------------------------------------------------------------------- shared assertions


def oci_codes(reply: Reply) -> list[str]:
    """The error codes of an OCI error body; fails if the body is anything else."""
    return oci_error_codes(reply.headers.get("content-type", ""), reply.body)


def check_reply(env: Env, method: str, reply: Reply) -> list[str]:
    """No 5xx; every error is the OCI body (none at all for HEAD); the mirror's log and
    files are clean. Returns the error codes (empty for a success)."""
    log = env.read_log()  # read first: a failure here must not be blamed on the next example
    assert reply.status < 500, (reply.status, reply.body[:500], log[-4000:])
    env.check_log(log)
    env.check_files()
    if method == "HEAD":
        assert reply.body == b""
        return []
    if reply.status >= 400:
        return oci_codes(reply)
    return []


def _valid(parse: Any, value: str) -> bool:
    try:
        parse(value)
    except InvalidReference:
        return False
    return True


def interpretations(target: str) -> set[str]:
    """The paths a server could reasonably make of a request target: as sent, percent-
    decoded, with dot segments removed, with empty segments collapsed, and combinations."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    out = {path}
    for _ in range(2):
        for p in list(out):
            out.add(unquote(p, errors="replace"))
            out.add(posixpath.normpath(p) + ("/" if p.endswith("/") else ""))
            out.add(re.sub("/{2,}", "/", p))
    return out


def may_reach_upstream(method: str, target: str) -> bool:
    """Could a correct mirror ask the upstream about this request? Only a read of a
    distribution endpoint whose name and reference are valid (under some reading of the
    target) may; everything else must be answered without the upstream."""
    if method not in READ_METHODS:
        return False
    for path in interpretations(target):
        if not path.startswith("/v2/"):
            continue
        rest = path[4:]
        if rest.endswith("/tags/list") and _valid(parse_repo_name, rest[: -len("/tags/list")]):
            return True
        for marker, parse in (("/manifests/", parse_reference), ("/blobs/", parse_digest)):
            for match in re.finditer(re.escape(marker), rest):
                name, ref = rest[: match.start()], rest[match.end() :]
                if _valid(parse_repo_name, name) and _valid(parse, ref):
                    return True
    return False


# ---------------------------------------------------------------------- strategies

#: Raw fragments of a request target, sent as they are.
RAW_TOKENS = (
    "..",
    ".",
    "...",
    "%2e%2e",
    "%2E%2E",
    "%2e",
    ".%2e",
    "%2e.",
    "%252e%252e",
    "%2f",
    "%2F",
    "..%2f",
    "%2e%2e%2f",
    "%5c",
    "\\",
    "..\\",
    "%00",
    "%0a",
    "%0d%0a",
    "%ff",
    "%c0%ae",
    "%c0%af",
    "%",
    "%z",
    "%zz",
    "%25",
    "%C3%A9",
    "%E2%80%AE",
    "%E2%80%8B",
    "%EF%BC%8E",
    "%F0%9F%90%B3",
    ";",
    ";x=y",
    "~",
    "@",
    ":",
    "*",
    "$",
    "'",
    '"',
    "<",
    ">",
    "{",
    "}",
    "|",
    "`",
    "^",
    "[",
    "]",
    "+",
    ",",
    "=",
    "&",
    "//",
    "/",
    "_",
    "__",
    "-",
    "A",
    "Library",
    "manifests",
    "blobs",
    "uploads",
    "tags",
    "list",
    "_catalog",
    "v2",
    "library",
    "alpine",
    "docker.io",
    "localhost",
    "127.0.0.1:5000",
    "etc",
    "passwd",
)


def encode_text(text: str) -> str:
    """Printable ASCII stays (but ``?``, ``#``, ``%``), everything else is %-encoded UTF-8."""
    out = []
    for ch in text:
        if 0x21 <= ord(ch) < 0x7F and ch not in "?#%":
            out.append(ch)
        else:
            out.append(quote(ch.encode("utf-8", "surrogatepass"), safe=""))
    return "".join(out)


COMPONENT_RE = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
valid_component = st.from_regex(re.compile(COMPONENT_RE), fullmatch=True).filter(
    lambda s: len(s) <= 40
)
# Strategies are composites that join inside: strings built with ``.map``/``builds`` are
# pretty-printed as the whole call tree for every example (observability), which is slow.


@st.composite
def pieces(draw: st.DrawFn, max_pieces: int) -> str:
    """Raw tokens, %-encoded text, valid components and long runs, concatenated."""
    out = []
    for _ in range(draw(st.integers(1, max_pieces))):
        kind = draw(st.sampled_from(["token", "text", "component", "run"]))
        if kind == "token":
            out.append(draw(st.sampled_from(RAW_TOKENS)))
        elif kind == "text":
            out.append(encode_text(draw(st.text(max_size=12))))
        elif kind == "component":
            out.append(draw(valid_component))
        else:
            out.append(draw(st.sampled_from("a.-_/%")) * draw(st.integers(1, 3000)))
    return "".join(out)


@st.composite
def hostile_name(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["pieces", "valid", "text"]))
    if kind == "pieces":
        return "/".join(draw(st.lists(pieces(3), min_size=1, max_size=8)))
    if kind == "valid":
        return "/".join(draw(st.lists(valid_component, min_size=1, max_size=4)))
    return encode_text(draw(st.text(max_size=300)))


HEX = "0123456789abcdef"
DIGEST_ALGORITHMS = ["sha256", "sha512", "SHA256", "md5", "sha384", "sha256+b64", "", "x"]
ODD_DIGESTS = [
    "sha256:../../../etc/passwd",
    "sha256:%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "sha256:" + "0" * 64 + "/../x",
    "sha256:" + "0" * 64 + "%00",
    "sha256:" + "0" * 64 + ";x",
    "sha256::" + "0" * 64,
    "sha256%3A" + "0" * 64,
]


@st.composite
def hostile_digest(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from(ODD_DIGESTS))
    algorithm = draw(st.sampled_from(DIGEST_ALGORITHMS))
    hexes = draw(
        st.one_of(
            st.text(alphabet=HEX, min_size=60, max_size=130),
            st.text(alphabet=HEX + "ABCDEFgz", max_size=140),
            st.sampled_from(["0" * 64, "0" * 128, "0" * 63, "0" * 65]),
        )
    )
    return f"{algorithm}:{hexes}"


@st.composite
def hostile_reference(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["digest", "tag", "pieces", "text"]))
    if kind == "digest":
        return draw(hostile_digest())
    if kind == "tag":
        return draw(st.from_regex(re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"), fullmatch=True))
    if kind == "pieces":
        return draw(pieces(4))
    return encode_text(draw(st.text(max_size=200)))


HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


@st.composite
def header_value(draw: st.DrawFn, max_size: int = 200) -> bytes:
    """Bytes a header value may hold on the wire (no control characters; obs-text is
    allowed), from 0 to ``max_size`` characters."""
    return draw(st.text(alphabet=HEADER_CHARS, max_size=max_size)).strip().encode("latin-1")


def _target_fits(target: str) -> bool:
    return len(target) <= MAX_TARGET


# ---------------------------------------------------------------------- names


@settings(max_examples=250, deadline=None)
@given(
    name=hostile_name(),
    method=st.sampled_from(READ_METHODS),
    endpoint=st.sampled_from(["manifests/latest", "blobs/", "tags/list", "manifests/digest"]),
)
def test_hostile_repository_names(env: Env, name: str, method: str, endpoint: str) -> None:
    if endpoint == "blobs/":
        endpoint = f"blobs/{env.blob_digest}"
    elif endpoint == "manifests/digest":
        endpoint = f"manifests/{env.image.digest}"
    target = f"/v2/{name}/{endpoint}"
    assume(_target_fits(target))
    _count("test_hostile_repository_names")
    invalid = not may_reach_upstream(method, target)
    with env.upstream_untouched(expect=invalid):
        reply = env.send(method, target, [(b"Accept", MANIFEST_ACCEPT.encode())])
    check_reply(env, method, reply)
    if invalid:
        assert 400 <= reply.status < 500, (target, reply.status)


# ---------------------------------------------------------------------- references


@settings(max_examples=200, deadline=None)
@given(
    ref=hostile_reference(),
    method=st.sampled_from(READ_METHODS),
    kind=st.sampled_from(["manifests", "blobs"]),
)
def test_hostile_references(env: Env, ref: str, method: str, kind: str) -> None:
    target = f"/v2/{REPO}/{kind}/{ref}"
    assume(_target_fits(target))
    _count("test_hostile_references")
    invalid = not may_reach_upstream(method, target)
    with env.upstream_untouched(expect=invalid):
        reply = env.send(method, target, [(b"Accept", MANIFEST_ACCEPT.encode())])
    codes = check_reply(env, method, reply)
    if invalid:
        assert 400 <= reply.status < 500, (target, reply.status)
    if reply.status == 200 and method == "GET":
        # A reference that reached a cached thing must have named it exactly.
        digest = reply.headers.get("docker-content-digest")
        assert digest in (env.image.digest, env.blob_digest), (target, digest)
        named = interpretations(target)
        assert any(p.endswith(("/latest", str(digest))) for p in named), (target, digest, codes)


# ---------------------------------------------------------------------- ranges

#: Byte positions: ``{S}``, ``{S+1}``… stand for the blob's size (and around it), filled
#: in by the test, so the edges of the blob are drawn as often as anything else.
numbers = st.one_of(
    st.integers(0, 4000).map(str),
    st.integers(0, 10**25).map(str),
    st.sampled_from(["{S-1}", "{S}", "{S+1}", "{S+2}", "{S+1000}", "{S-1000}"]),
    st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64, 10**19 - 1, 10**19]).map(str),
)


def _fill_size(header: str, size: int) -> str:
    def value(match: re.Match[str]) -> str:
        return str(max(0, size + int(match[1] or 0)))

    return re.sub(r"\{S([+-][0-9]+)?\}", value, header)


RANGE_FORMS = [
    "bytes = {a}-{b}",
    "BYTES={a}-{b}",
    "Bytes={a}-",
    "bytes={a}-{b};x",
    "bytes={a}-{b},",
    "bytes=,{a}-{b}",
    "items={a}-{b}",
    "bytes=-{a}-{b}",
    "bytes=--{a}",
    "bytes={a}--{b}",
    "bytes=+{a}-",
    "bytes={a}.5-{b}",
    "bytes=0x{a}-",
    "bytes= {a}-{b}",
    "bytes={a} -{b}",
    "bytes={a}-{b} {a}-{b}",
    "bytes=\u0663-{b}",
    "bytes={a}-\u00b2",
    "bytes=-",
    "bytes=",
    "bytes",
    "=",
    "-",
]


@st.composite
def single_range(draw: st.DrawFn) -> str:
    form = draw(st.sampled_from(["{a}-{b}", "{a}-", "-{b}"]))
    return form.format(a=draw(numbers), b=draw(numbers))


@st.composite
def range_header(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["single", "single", "multiple", "odd", "text"]))
    if kind == "single":
        return "bytes=" + draw(single_range())
    if kind == "multiple":
        return "bytes=" + ",".join(draw(st.lists(single_range(), min_size=2, max_size=5)))
    if kind == "odd":
        return draw(st.sampled_from(RANGE_FORMS)).format(a=draw(numbers), b=draw(numbers))
    return draw(st.text(max_size=60))


def _strict_range(header: str, size: int) -> tuple[int, int] | str | None:
    """What a correct server must answer to a well-formed single range of small numbers:
    ``(start, end)`` inclusive for 206, ``"416"``; None when RFC 9110 lets it choose."""
    match = re.fullmatch(r"bytes=([0-9]{0,18})-([0-9]{0,18})", header.strip(" \t"))
    if match is None or not (match[1] or match[2]):
        return None
    first, last = match[1], match[2]
    if not first:
        suffix = int(last)
        return "416" if suffix == 0 else (max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range-spec: ignored or refused
    if start >= size:
        return "416"
    return (start, min(int(last), size - 1) if last else size - 1)


@settings(max_examples=200, deadline=None)
@given(header=range_header(), method=st.sampled_from(["GET", "GET", "HEAD"]))
def test_hostile_range_headers(env: Env, header: str, method: str) -> None:
    header = _fill_size(header, len(env.blob))
    raw = header.encode("utf-8", "surrogatepass")
    assume(all(b >= 0x20 and b != 0x7F for b in raw) and len(raw) <= MAX_HEADER_VALUE)
    _count("test_hostile_range_headers")
    size, data = len(env.blob), env.blob
    reply = env.send(method, f"/v2/{REPO}/blobs/{env.blob_digest}", [(b"Range", raw.strip())])
    codes = check_reply(env, method, reply)
    assert reply.status in (200, 206, 416), (header, reply.status)
    if reply.status == 416:
        assert reply.headers.get("content-range") == f"bytes */{size}"
        if method == "GET":
            assert codes, header
    if reply.status == 206:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", reply.headers.get("content-range", ""))
        assert match is not None, reply.headers
        start, end, total = int(match[1]), int(match[2]), int(match[3])
        assert total == size and 0 <= start <= end < size, (header, match[0])
        assert int(reply.headers["content-length"]) == end - start + 1
        if method == "GET":
            assert reply.body == data[start : end + 1], header
    if reply.status == 200:
        assert int(reply.headers["content-length"]) == size
        if method == "GET":
            assert reply.body == data
    expected = _strict_range(raw.decode("latin-1"), size)
    if method == "GET" and expected == "416":
        assert reply.status == 416, (header, reply.status)
    elif method == "GET" and isinstance(expected, tuple):
        assert reply.status == 206, (header, reply.status)
        assert reply.body == data[expected[0] : expected[1] + 1], header


def test_range_starting_past_the_end_is_unsatisfiable(env: Env) -> None:
    """``bytes=N-`` with N at or past the blob's end is unsatisfiable (416), as the
    mirror's own ``parse_range`` promises, however far past the end N is."""
    size = len(env.blob)
    with env.own_log():
        for start in (size, size + 1, size + 1000):
            reply = env.send(
                "GET",
                f"/v2/{REPO}/blobs/{env.blob_digest}",
                [(b"Range", f"bytes={start}-".encode())],
            )
            assert reply.status == 416, (start, size, reply.status)
            assert reply.headers.get("content-range") == f"bytes */{size}"
            assert oci_codes(reply)


# ---------------------------------------------------------------------- query strings

query_key = st.one_of(
    st.sampled_from(["n", "n", "last", "ns", "ns", "N", "n ", "", "n[]"]), st.text(max_size=8)
)
query_value = st.one_of(
    st.from_regex(re.compile(r"-?[0-9]{1,13}"), fullmatch=True),
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "000000001",
            "999999999",
            "1000000000",
            "99999999999999999999",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "0x10",
            "\u00b2",
            "\u00b9\u00b2",
            "\u0663",
            "\u0661\u0662",
            "\uff11",
            "\u2460",
            "NaN",
            "docker.io",
            "DOCKER.IO",
            "registry-1.docker.io",
            "ghcr.io",
            "localhost",
            "latest",
            "library/alpine",
            "\x00",
            "%",
            "\u202e",
        ]
    ),
    st.text(max_size=40),
)
raw_query_token = st.sampled_from(
    ["n", "ns", "last", "=", "&", "&&", "n=1=2", "n=%zz", "ns=%ff", "n=%", "%", "n=%00", "+"]
)


def _known_registries(env: Env) -> set[str]:
    return {"docker.io", *DOCKER_HUB_HOSTS, env.upstream.host}


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(query_key, query_value), max_size=5),
    raw=st.lists(raw_query_token, max_size=2),
    endpoint=st.sampled_from(["tags", "tags", "catalog"]),
)
def test_hostile_query_strings(
    env: Env, pairs: list[tuple[str, str]], raw: list[str], endpoint: str
) -> None:
    parts = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs] + raw
    query = "&".join(parts)
    path = f"/v2/{REPO}/tags/list" if endpoint == "tags" else "/v2/_catalog"
    target = f"{path}?{query}"
    assume(_target_fits(target))
    _count("test_hostile_query_strings")
    seen = URL("http://mirror" + target, encoded=True).query  # what the mirror reads
    n, ns = seen.get("n"), seen.get("ns")
    bad_ns = endpoint == "tags" and ns is not None and ns.lower() not in _known_registries(env)
    # ASCII digits only (not superscript, Arabic-Indic or fullwidth ones), nine at most.
    bad_n = n is not None and n != "" and not re.fullmatch(r"[0-9]{1,9}", n)
    with env.upstream_untouched(expect=bad_ns or bad_n):
        reply = env.send("GET", target)
    codes = check_reply(env, "GET", reply)
    if bad_ns:
        assert reply.status in (400, 404), (target, reply.status)
        assert codes[0] in ("NAME_UNKNOWN", "PAGINATION_NUMBER_INVALID"), codes
    elif bad_n:
        assert reply.status == 400, (target, reply.status)
        assert codes == ["PAGINATION_NUMBER_INVALID"], codes
    else:
        assert reply.status == 200, (target, reply.status, reply.body[:300])
        body = json.loads(reply.body)
        listed = body["tags"] if endpoint == "tags" else body["repositories"]
        assert set(listed) <= ({"latest"} if endpoint == "tags" else {REPO}), body
        if n:
            assert len(listed) <= int(n), (n, listed)


def test_page_size_in_other_digits_is_a_client_error(env: Env) -> None:
    """``n=²`` (a digit to str.isdigit, not to int) on both listings: a 400, not a 500."""
    with env.own_log():
        for path in (f"/v2/{REPO}/tags/list", "/v2/_catalog"):
            reply = env.send("GET", f"{path}?n=%C2%B2")
            assert reply.status == 400, (path, reply.status, reply.body)
            assert oci_codes(reply) == ["PAGINATION_NUMBER_INVALID"]


def test_invalid_page_size_is_refused_before_asking_upstream(env: Env) -> None:
    with env.own_log(), env.upstream_untouched(expect=True):
        reply = env.send("GET", f"/v2/{REPO}/tags/list?n=many")
        assert reply.status == 400
        assert oci_codes(reply) == ["PAGINATION_NUMBER_INVALID"]


# ---------------------------------------------------------------------- Accept and friends

media_types = st.sampled_from(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/json",
        "*/*",
        "application/*",
        "*",
        "text/html",
        "",
    ]
)
q_param = st.sampled_from(
    [
        "",
        ";q=0",
        ";q=0.0",
        ";q=1",
        ";q=nan",
        ";q=inf",
        ";q=-1",
        ";q=1e999",
        ";q=",
        ";q",
        ";;",
        ";x=y",
    ]
)


@st.composite
def accept_value(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["list", "list", "run", "junk"]))
    if kind == "list":
        items = draw(st.lists(st.tuples(media_types, q_param), max_size=8))
        return ", ".join(media_type + q for media_type, q in items)
    if kind == "run":
        return draw(st.sampled_from([",", ";", " ,", "*/*,"])) * draw(st.integers(1, 3000))
    return draw(header_value(300)).decode("latin-1")


@settings(max_examples=180, deadline=None)
@given(
    accepts=st.lists(accept_value(), max_size=40),
    user_agent=st.one_of(st.none(), header_value()),
    if_none_match=st.one_of(st.none(), header_value(), st.just("*"), st.just("W/")),
    method=st.sampled_from(READ_METHODS),
    ref=st.sampled_from(["latest", "digest", "nope"]),
)
def test_hostile_accept_headers(
    env: Env,
    *,
    accepts: list[str],
    user_agent: bytes | None,
    if_none_match: bytes | str | None,
    method: str,
    ref: str,
) -> None:
    headers = [(b"Accept", value.strip().encode("latin-1")) for value in accepts]
    if user_agent is not None:
        headers.append((b"User-Agent", user_agent))
    if if_none_match is not None:
        value = if_none_match if isinstance(if_none_match, bytes) else if_none_match.encode()
        headers.append((b"If-None-Match", value))
    assume(all(len(v) <= MAX_HEADER_VALUE for _, v in headers))
    _count("test_hostile_accept_headers")
    reference = env.image.digest if ref == "digest" else ref
    reply = env.send(method, f"/v2/{REPO}/manifests/{reference}", headers)
    codes = check_reply(env, method, reply)
    if ref == "nope":
        assert reply.status == 404, reply.status
        assert method == "HEAD" or codes == ["MANIFEST_UNKNOWN"], codes
        return
    assert reply.status in (200, 304, 404), (reply.status, reply.body[:300])
    if reply.status == 404:
        assert method == "HEAD" or codes == ["MANIFEST_UNKNOWN"], codes
    if reply.status in (200, 304):
        assert reply.headers["docker-content-digest"] == env.image.digest
    if reply.status == 200 and method == "GET":
        assert reply.body == env.image.manifest


# ---------------------------------------------------------------------- methods

method_paths = st.one_of(
    st.sampled_from(
        [
            "/v2/",
            "/v2",
            "/v2/_catalog",
            f"/v2/{REPO}/manifests/latest",
            f"/v2/{REPO}/manifests/sha256:{'0' * 64}",
            f"/v2/{REPO}/blobs/sha256:{'0' * 64}",
            f"/v2/{REPO}/blobs/uploads/",
            f"/v2/{REPO}/blobs/uploads/123",
            f"/v2/{REPO}/tags/list",
            f"/v2/{REPO}/whatever",
            "/",
            "/v1/_ping",
        ]
    ),
    hostile_name(),
)


@settings(max_examples=180, deadline=None)
@given(
    method=st.sampled_from(PARSEABLE_METHODS),
    path=method_paths,
    body=st.one_of(st.just(b""), st.binary(min_size=1, max_size=2000)),
)
def test_hostile_methods(env: Env, method: str, path: str, body: bytes) -> None:
    if not path.startswith("/"):  # a hostile name
        path = f"/v2/{path}/manifests/latest"
    assume(_target_fits(path))
    if method in READ_METHODS or method in ("TRACE", "CONNECT"):
        body = b""
    _count("test_hostile_methods")
    invalid = not may_reach_upstream(method, path)
    with env.upstream_untouched(expect=invalid):
        reply = env.send(method, path, body=body)
    codes = check_reply(env, method, reply)
    if method not in READ_METHODS:
        assert 400 <= reply.status < 500, (method, path, reply.status)
        if reply.status == 405:
            assert codes == ["UNSUPPORTED"], codes


# ---------------------------------------------------------------------- below the routes

PARSER_REFUSALS: dict[str, tuple[str, str, list[tuple[bytes, bytes]]]] = {
    "request line too long": ("GET", f"/v2/{REPO}/manifests/{'a' * 9000}", []),
    "header too long": ("GET", f"/v2/{REPO}/manifests/latest", [(b"Accept", b"x" * 9000)]),
    "too many headers": (
        "GET",
        f"/v2/{REPO}/manifests/latest",
        [(f"X-H{i}".encode(), b"v") for i in range(150)],
    ),
    "unknown method": ("BREW", f"/v2/{REPO}/tags/list", []),
    "asterisk target": ("GET", "*", []),
    "control character in a header": (
        "GET",
        f"/v2/{REPO}/manifests/latest",
        [(b"Accept", b"a\x01b")],
    ),
}


@pytest.mark.parametrize("case", PARSER_REFUSALS.values(), ids=PARSER_REFUSALS.keys())
def test_requests_the_http_parser_refuses_get_an_oci_error(
    env: Env, case: tuple[str, str, list[tuple[bytes, bytes]]]
) -> None:
    """Requests refused before routing (aiohttp's parser and its limits) still get a 4xx
    with the OCI error body, and only a one-line log entry. Sent after a good request on
    the same connection: a parser error there is not the connection's first request."""
    method, target, headers = case
    with httpcore.ConnectionPool(max_connections=1) as pool, env.own_log():
        kept = Env(env.base, env.upstream, env.mirror, env.image, pool)
        assert kept.send("GET", "/v2/").status == 200
        with env.upstream_untouched(expect=True):
            reply = kept.send(method, target, headers)
        assert 400 <= reply.status < 500, reply
        env.check_log()
        assert oci_codes(reply), reply
