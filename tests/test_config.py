"""Settings: precedence of the sources, registry:2 compatibility, one-line errors (exit 2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from registry_mirror.config import ConfigError, load_settings, parse_duration, parse_size
from tests.support.mirror import mirror_binary


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_mirror_docker_hub_on_port_5000() -> None:
    settings, ignored = load_settings(environ={})
    assert settings.proxy.remoteurl == "https://registry-1.docker.io"
    assert settings.proxy.is_dockerhub
    assert settings.listen() == ("", 5000)  # every interface, IPv4 and IPv6
    assert ignored == []


def test_registry2_config_file_and_environment(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.yml",
        """
version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
proxy:
  remoteurl: https://ghcr.io
  username: alice
  password: s3cret
health:
  storagedriver:
    enabled: true
""",
    )
    settings, ignored = load_settings(environ={}, config_file=config)
    assert settings.proxy.remoteurl == "https://ghcr.io"
    assert settings.proxy.username == "alice"
    assert settings.proxy.password is not None
    assert settings.proxy.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.root == Path("/var/lib/registry")
    assert not settings.proxy.is_dockerhub
    assert set(ignored) == {"version", "log.fields", "storage.cache", "http.headers"}
    assert settings.health.storagedriver.enabled  # registry:2's health section applies

    env = {
        "REGISTRY_PROXY_REMOTEURL": "https://quay.io",
        "REGISTRY_HTTP_ADDR": "127.0.0.1:6000",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/srv/cache",
    }
    settings, _ = load_settings(environ=env, config_file=config)
    assert settings.proxy.remoteurl == "https://quay.io"
    assert settings.listen() == ("127.0.0.1", 6000)
    assert settings.root == Path("/srv/cache")

    env["REGISTRY_MIRROR_PROXY_REMOTEURL"] = "https://registry.k8s.io"
    settings, _ = load_settings(environ=env, config_file=config)
    assert settings.proxy.remoteurl == "https://registry.k8s.io"

    settings, _ = load_settings(
        environ=env, config_file=config, flags={"proxy.remoteurl": "http://127.0.0.1:1"}
    )
    assert settings.proxy.remoteurl == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("proxy:\n  remotURL: https://x\n", {}, "unknown key 'proxy.remotURL'"),
        ("proxy: [1, 2]\n", {}, "unknown key 'proxy'"),
        ("http:\n  addr: nowhere\n", {}, "http.addr: invalid address 'nowhere'"),
        ("proxy:\n  remoteurl: ftp://x\n", {}, "proxy.remoteurl: invalid URL"),
        ("proxy:\n  remoteurl: https://x/v2/\n", {}, "must not have a path"),
        ("proxy:\n  read_timeout: soon\n", {}, "proxy.read_timeout: invalid duration"),
        ("log:\n  level: chatty\n", {}, "log.level"),
        ("", {"REGISTRY_MIRROR_PROXY_REMOTEURL2": "x"}, "REGISTRY_MIRROR_PROXY_REMOTEURL2"),
        ("", {"REGISTRY_MIRROR_HTTP_ADDR": ":99999"}, "http.addr"),
        ("proxy: {remoteurl: [unclosed\n", {}, "invalid YAML at line"),
    ],
)
def test_bad_configuration_is_one_clear_line(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    config = write(tmp_path / "c.yml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env, config_file=config)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_error_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"from REGISTRY_MIRROR_PROXY_CONNECT_TIMEOUT"):
        load_settings(environ={"REGISTRY_MIRROR_PROXY_CONNECT_TIMEOUT": "never"})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [mirror_binary(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["serve", "/nonexistent/config.yml"],
            {},
            "cannot read config file /nonexistent/config.yml",
        ),
        (["serve", "--http-addr", "bogus"], {}, "http.addr: invalid address"),
        (
            ["serve"],
            {"REGISTRY_MIRROR_NOPE": "1"},
            "unknown environment variable REGISTRY_MIRROR_NOPE",
        ),
        (["serve", "--proxy-read-timeout", "x"], {}, "proxy.read_timeout: invalid duration"),
    ],
)
def test_cli_config_errors_exit_2_without_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    proc = run_cli(*args, env=env)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_unknown_flag_is_usage_error() -> None:
    proc = run_cli("serve", "--no-such-flag")
    assert proc.returncode == 2
    assert "--no-such-flag" in proc.stderr


def test_cli_unwritable_storage_is_a_clear_error(tmp_path: Path) -> None:
    blocker = write(tmp_path / "file", "not a directory")
    proc = run_cli("serve", "--addr", "127.0.0.1:0", "--root", str(blocker / "sub"))
    assert proc.returncode == 1
    assert "cannot create storage" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sizes_and_durations() -> None:
    assert parse_size("50GiB") == 50 * 1024**3
    assert parse_size("1.5MB") == 1_500_000
    assert parse_size(1024) == 1024
    assert parse_duration("1h30m") == 5400
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("2.5") == 2.5
    for bad in ("-1", "10 parsecs", "GiB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ("1x", "m5", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_health_settings_and_the_drain_timeout(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        """
http:
  draintimeout: 45s
health:
  storagedriver:
    enabled: true
    interval: 5s
    threshold: 2
  file:
    - file: /run/registry-mirror/maintenance
      interval: 1s
  http:
    - uri: http://10.0.0.5:8080/ping
      headers:
        Authorization: [Bearer t]
      statuscode: 204
      timeout: 3s
  tcp:
    - addr: redis:6379
"""
    )
    settings, ignored = load_settings(environ={}, config_file=config)
    assert ignored == []
    assert settings.http.draintimeout == 45.0
    health = settings.health
    assert (health.storagedriver.interval, health.storagedriver.threshold) == (5.0, 2)
    assert health.file[0].file == Path("/run/registry-mirror/maintenance")
    assert health.http[0].statuscode == 204 and health.http[0].timeout == 3.0
    assert health.http[0].headers == {"Authorization": ["Bearer t"]}
    assert health.tcp[0].addr == "redis:6379"
    assert settings.readiness_min_free == 100 * 1000**2  # the default

    defaults, _ = load_settings(environ={})
    assert defaults.http.draintimeout == 25.0


def test_the_readiness_free_space_threshold_stays_below_eviction() -> None:
    settings, _ = load_settings(environ={}, flags={"storage.min_free": "100MiB"})
    assert settings.readiness_min_free == 50 * 2**20  # half of it, when below 100 MB
    settings, _ = load_settings(environ={}, flags={"health.min_free": "0"})
    assert settings.readiness_min_free == 0  # no free-space check
    with pytest.raises(ConfigError, match=r"health\.min_free .* must be below storage\.min_free"):
        load_settings(environ={}, flags={"storage.min_free": "1GiB", "health.min_free": "2GiB"})
    with pytest.raises(ConfigError, match=r"health\.tcp: invalid address"):
        load_settings(environ={}, flags={"health.tcp": '[{"addr": "no-port"}]'})
    with pytest.raises(ConfigError, match=r"health\.http\.0\.uri"):
        load_settings(environ={}, flags={"health.http": '[{"uri": "ftp://x/ping"}]'})
