"""The mirror's logs, from the real process in front of a real upstream registry: JSON lines
(``log.formatter: json``, and ``logstash``) with their fields; the access log's new fields
(kind, registry, repository, cache result, request id) after the line it always had; one
request id per request, in ``X-Request-Id``, on its access line and on the lines of the
upstream requests made for it (a download shared by several clients: its leader's); the
cache result a client pulling by tag and one resolving a tag with HEAD see."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from registry_mirror.logs import JsonFormatter, TextFormatter, accepted_request_id
from tests.conftest import MirrorFactory
from tests.support.clients import mirror_access_lines
from tests.support.faulty import FaultyProxy
from tests.support.images import MANIFEST_ACCEPT, PushedImage, push_image
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.prometheus import scrape
from tests.support.registry import RegistryProcess
from tests.support.waits import wait_until

MiB = 1 << 20
ACCEPT = {"Accept": MANIFEST_ACCEPT}
UPSTREAM_LOGGER = "registry_mirror.upstream.sender"
TEXT_ACCESS = re.compile(
    r'aiohttp\.access: (?P<client>\S+) (?P<user>\S+) "(?P<method>[A-Z]+) (?P<target>\S+)'
    r' HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+) [\d.]+s "[^"]*"(?P<fields>(?: \w+=\S+)*)$'
)


def json_lines(mirror: MirrorProcess) -> list[dict[str, Any]]:
    """Every line of the log, each one JSON object (the test fails on one that is not)."""
    records = []
    for line in mirror.log().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def text_access(mirror: MirrorProcess) -> list[dict[str, str]]:
    """The access lines of a text log: the line's parts and its ``key=value`` fields."""
    found = []
    for line in mirror.log().splitlines():
        match = TEXT_ACCESS.search(line)
        if match is None:
            continue
        parts = {k: v for k, v in match.groupdict().items() if k != "fields"}
        for pair in match["fields"].split():
            key, _, value = pair.partition("=")
            parts[key] = value
        found.append(parts)
    return found


def by_request_id(lines: list[dict[str, str]], request_id: str) -> dict[str, str]:
    matching = [line for line in lines if line.get("request_id") == request_id]
    assert len(matching) == 1, (request_id, lines)
    return matching[0]


def get(mirror: MirrorProcess, method: str, path: str, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client:
        response = client.request(method, path, headers={**ACCEPT, **headers})
    assert response.status_code == 200, response.text
    return response


def wait_logged(mirror: MirrorProcess, *request_ids: str) -> None:
    """A request's access line is written once its response has left."""
    wait_until(
        lambda: all(
            f"request_id={rid}" in mirror.log() or f'"{rid}"' in mirror.log() for rid in request_ids
        ),
        message=mirror.log,
    )


def test_json_lines_carry_the_fields_and_the_request_id_reaches_upstream_lines(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    image = push_image(upstream.url, "library/alpine", "3", layers=[5000])
    mirror = mirror_factory(upstream.url, args=["--log-formatter", "json"])
    manifest = get(mirror, "GET", f"/v2/{image.repo}/manifests/3")
    layer = image.layer_digests[0]
    blob = get(mirror, "GET", f"/v2/{image.repo}/blobs/{layer}")
    ids = [manifest.headers["X-Request-Id"], blob.headers["X-Request-Id"]]
    assert ids[0] != ids[1]
    wait_logged(mirror, *ids)
    # The download logs once committed, which may be just after the response left.
    wait_until(lambda: f"cached {layer}" in mirror.log(), message=mirror.log)
    records = json_lines(mirror)
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    access = [r for r in records if r["logger"] == "aiohttp.access"]
    line = next(r for r in access if r.get("request_id") == ids[0])
    assert line["level"] == "info"
    assert line["client"] == "127.0.0.1" and line["user"] is None
    assert line["method"] == "GET" and line["target"] == f"/v2/{image.repo}/manifests/3"
    assert line["status"] == 200 and line["bytes"] == len(image.manifest)
    assert isinstance(line["duration"], float) and line["duration"] >= 0
    assert line["user_agent"].startswith("python-httpx/")
    assert (line["kind"], line["registry"], line["repository"], line["cache"]) == (
        "manifest",
        "docker.io",
        "library/alpine",
        "miss",
    )
    assert line["message"].startswith(
        '127.0.0.1 - "GET /v2/library/alpine/manifests/3 HTTP/1.1" 200'
    )
    # The upstream requests made for it: the tag's HEAD, then the manifest's GET.
    upstream_lines = [r for r in records if r["logger"] == UPSTREAM_LOGGER]
    mine = [
        (r["method"], r["url"].split("/v2/")[1])
        for r in upstream_lines
        if r.get("request_id") == ids[0]
    ]
    assert mine == [
        ("HEAD", f"{image.repo}/manifests/3"),
        ("GET", f"{image.repo}/manifests/{image.digest}"),
    ]
    for record in upstream_lines:
        assert record["upstream"] == "docker.io" and record["status"] == 200
    # The blob's download ran as a task of its own: it logs under the request that began it.
    blob_lines = [r for r in upstream_lines if r.get("request_id") == ids[1]]
    assert [(r["method"], r["url"].endswith(f"/blobs/{layer}")) for r in blob_lines] == [
        ("GET", True)
    ]
    cached = [r for r in records if r["message"].startswith(f"cached {layer}")]
    assert [r.get("request_id") for r in cached] == [ids[1]]
    blob_line = next(r for r in access if r.get("request_id") == ids[1])
    assert (blob_line["kind"], blob_line["cache"], blob_line["bytes"]) == (
        "blob",
        "miss",
        len(image.blobs[layer]),
    )
    # Lines logged outside of any request carry no request id.
    start = next(r for r in records if r["message"].startswith("listening on"))
    assert "request_id" not in start


def test_logstash_lines_are_json_with_logstash_fields(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    mirror = mirror_factory(upstream.url, args=["--log-formatter", "logstash"])
    records = json_lines(mirror)
    assert records
    for record in records:
        assert record["@version"] == "1" and record["@timestamp"] == record["time"]


def test_text_access_line_keeps_its_shape_and_appends_the_fields(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    image = push_image(upstream.url, "library/alpine", "3", layers=[5000])
    mirror = mirror_factory(upstream.url)
    response = get(mirror, "GET", f"/v2/{image.repo}/manifests/3")
    request_id = response.headers["X-Request-Id"]
    wait_logged(mirror, request_id)
    line = next(
        line
        for line in mirror.log().splitlines()
        if f"request_id={request_id}" in line and "aiohttp.access" in line
    )
    assert re.search(
        rf'INFO aiohttp\.access: 127\.0\.0\.1 - "GET /v2/library/alpine/manifests/3 HTTP/1\.1"'
        rf' 200 {len(image.manifest)} [\d.]+s "python-httpx/[\d.]+" kind=manifest'
        rf" registry=docker\.io repository=library/alpine cache=miss request_id={request_id}$",
        line,
    ), line
    # The access-log readers of the other tests still read it.
    assert ("GET", "/v2/library/alpine/manifests/3") in mirror_access_lines(mirror.log())
    upstream_lines = [
        line for line in mirror.log().splitlines() if f"INFO {UPSTREAM_LOGGER}: " in line
    ]
    assert [line.endswith(f" request_id={request_id}") for line in upstream_lines] == [True, True]
    assert re.search(
        r"upstream docker\.io: HEAD http://\S+/v2/library/alpine/manifests/3 200 ",
        upstream_lines[0],
    )
    # A request outside the registry API has a kind and an id, no cache result.
    assert get(mirror, "GET", "/v2/").headers["X-Request-Id"]
    assert_log_quiet(mirror.log())


def pull_by_tag(mirror: MirrorProcess, image: PushedImage) -> list[str]:
    """Docker's and skopeo's way: GET the manifest by tag, then GET the blobs. The ids."""
    ids = [get(mirror, "GET", f"/v2/{image.repo}/manifests/{image.tag}").headers["X-Request-Id"]]
    for digest in image.blobs:
        ids.append(get(mirror, "GET", f"/v2/{image.repo}/blobs/{digest}").headers["X-Request-Id"])
    return ids


def pull_by_head(mirror: MirrorProcess, image: PushedImage) -> list[str]:
    """containerd's way: HEAD the tag, GET the manifest by the digest it named, HEAD and
    GET the blobs. The ids."""
    head = get(mirror, "HEAD", f"/v2/{image.repo}/manifests/{image.tag}")
    digest = head.headers["Docker-Content-Digest"]
    ids = [head.headers["X-Request-Id"]]
    ids.append(get(mirror, "GET", f"/v2/{image.repo}/manifests/{digest}").headers["X-Request-Id"])
    for blob in image.blobs:
        ids.append(get(mirror, "HEAD", f"/v2/{image.repo}/blobs/{blob}").headers["X-Request-Id"])
        ids.append(get(mirror, "GET", f"/v2/{image.repo}/blobs/{blob}").headers["X-Request-Id"])
    return ids


@pytest.mark.parametrize(
    ("client", "cold", "warm"),
    [
        (pull_by_tag, ["miss", "miss", "miss"], ["revalidated", "hit", "hit"]),
        (
            pull_by_head,
            ["miss"] * 6,
            ["revalidated", "hit", "hit", "hit", "hit", "hit"],
        ),
    ],
    ids=["get-by-tag", "head-then-get-by-digest"],
)
def test_the_access_log_names_the_cache_result(
    upstream: RegistryProcess,
    mirror_factory: MirrorFactory,
    client: Any,
    cold: list[str],
    warm: list[str],
) -> None:
    image = push_image(upstream.url, "library/alpine", "3", layers=[20_000])
    mirror = mirror_factory(upstream.url)
    first = client(mirror, image)
    second = client(mirror, image)
    wait_logged(mirror, *first, *second)
    lines = text_access(mirror)
    assert [by_request_id(lines, rid)["cache"] for rid in first] == cold
    assert [by_request_id(lines, rid)["cache"] for rid in second] == warm
    for rid in first + second:
        line = by_request_id(lines, rid)
        assert line["registry"] == "docker.io" and line["repository"] == "library/alpine"


def test_clients_joining_a_download_are_coalesced_and_its_upstream_line_is_the_leaders(
    upstream: RegistryProcess, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    image = push_image(upstream.url, "library/alpine", "3", layers=[3 * MiB])
    layer = image.layer_digests[0]
    mirror = mirror_factory(proxy.url)
    gate = proxy.gate("GET", r"/blobs/sha256:[0-9a-f]{64}$", at_bytes=MiB)
    ids: list[str] = []
    lock = threading.Lock()

    def fetch() -> None:
        with (
            httpx.Client(base_url=mirror.url, trust_env=False, timeout=60) as client,
            client.stream("GET", f"/v2/{image.repo}/blobs/{layer}") as response,
        ):
            with lock:
                ids.append(response.headers["X-Request-Id"])
            assert response.read() == image.blobs[layer]

    with ThreadPoolExecutor(3) as pool:
        leader = pool.submit(fetch)
        gate.wait_reached()
        wait_until(lambda: len(ids) == 1)
        followers = [pool.submit(fetch) for _ in range(2)]
        wait_until(lambda: len(ids) == 3)  # their headers are out: they follow the download
        gate.release()
        for future in [leader, *followers]:
            future.result()
    wait_logged(mirror, *ids)
    lines = text_access(mirror)
    assert [by_request_id(lines, rid)["cache"] for rid in ids] == ["miss", "coalesced", "coalesced"]
    downloads = [
        line
        for line in mirror.log().splitlines()
        if f"INFO {UPSTREAM_LOGGER}: " in line and f"/blobs/{layer} " in line
    ]
    assert len(downloads) == 1 and downloads[0].endswith(f" request_id={ids[0]}"), downloads


def test_a_request_id_is_taken_only_from_a_trusted_proxy_and_only_when_sane(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    trusting = mirror_factory(upstream.url, args=["--access-trusted-proxies", "127.0.0.1/32"])
    sane = "req-42.a:b_C"
    assert get(trusting, "GET", "/v2/", **{"X-Request-Id": sane}).headers["X-Request-Id"] == sane
    for odd in ["x" * 65, "two words", "-leading-dash", 'quo"te', "a/b"]:
        made = get(trusting, "GET", "/v2/", **{"X-Request-Id": odd}).headers["X-Request-Id"]
        assert made != odd and re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", made), (odd, made)
    wait_logged(trusting, sane)
    assert f"request_id={sane}" in trusting.log()
    distrusting = mirror_factory(upstream.url, name="other")
    made = get(distrusting, "GET", "/v2/", **{"X-Request-Id": sane}).headers["X-Request-Id"]
    assert made != sane and re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", made)


# ------------------------------------------------------------------ the formatters


def record(message: str, **attributes: object) -> logging.LogRecord:
    made = logging.LogRecord(
        "registry_mirror.test", logging.WARNING, __file__, 1, message, (), None
    )
    for key, value in attributes.items():
        setattr(made, key, value)
    return made


def test_text_fields_are_quoted_when_they_would_break_the_line() -> None:
    text = TextFormatter().format(
        record(
            "m",
            fields={
                "a": "plain",
                "b": "two words",
                "c": 'q"x',
                "d": 7,
                "e": "x=y",
                "f": "",
                "g": "\x1b[31m",
            },
            request_id="r-1",
        )
    )
    assert text.endswith(
        ' m a=plain b="two words" c="q\\"x" d=7 e="x=y" f="" g="\\u001b[31m" request_id=r-1'
    ), text
    assert "\n" not in text
    assert TextFormatter().format(record("plain")).endswith("WARNING registry_mirror.test: plain")


def test_json_lines_hold_the_exception_and_stay_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        made = record("failed %s", fields={"kind": "blob"})
        made.args = ("here",)
        made.exc_info = sys.exc_info()
    line = JsonFormatter().format(made)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed here" and parsed["level"] == "warning"
    assert parsed["kind"] == "blob" and "ValueError: boom" in parsed["exception"]
    assert "request_id" not in parsed


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("abc", True),
        ("A1._:-z", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        (None, False),
        (".dot", False),
        ("a b", False),
        ("a\nb", False),
        ("ü", False),
    ],
)
def test_request_ids_accepted_from_proxies(value: str | None, accepted: bool) -> None:
    assert accepted_request_id(value) == (value if accepted else None)


def test_tag_lists_are_misses_and_their_following_pages_hits(
    upstream: RegistryProcess, mirror_factory: MirrorFactory
) -> None:
    for tag in ("1", "2", "3"):
        push_image(upstream.url, "library/alpine", tag, layers=[100])
    mirror = mirror_factory(upstream.url)
    first = get(mirror, "GET", "/v2/library/alpine/tags/list?n=2")
    assert first.json()["tags"] == ["1", "2"]
    following = get(mirror, "GET", "/v2/library/alpine/tags/list?n=2&last=2")
    assert following.json()["tags"] == ["3"]
    ids = [first.headers["X-Request-Id"], following.headers["X-Request-Id"]]
    wait_logged(mirror, *ids)
    lines = text_access(mirror)
    assert [
        (by_request_id(lines, rid)["kind"], by_request_id(lines, rid)["cache"]) for rid in ids
    ] == [
        ("tags", "miss"),
        ("tags", "hit"),
    ]
    samples = scrape(f"{mirror.url}/metrics")
    count = "registry_mirror_cache_requests_total"
    assert samples.value(count, registry="docker.io", kind="tags", result="miss") == 1
    assert samples.value(count, registry="docker.io", kind="tags", result="hit") == 1
    received = "registry_mirror_upstream_received_bytes_total"
    assert samples.value(received, registry="docker.io", kind="tags") > 0
