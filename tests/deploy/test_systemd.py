"""``deploy/registry-mirror.service``: the systemd unit, checked by systemd's own tools and run.

Without systemd as PID 1 nothing here starts the unit itself. What is checked instead:

* ``systemd-analyze verify`` (offline) finds nothing to say about the unit. It also checks
  that ExecStart's program exists, so it is given a copy of the unit whose ExecStart names
  the test environment's ``registry-mirror`` — that one word and nothing else changed.
* ``systemd-analyze security --offline=yes``: the exposure score, and exactly which of its
  checks the unit leaves open (each one accepted below, with the reason).
* The unit's own command line, as systemd would run it: ExecStart with its ``${VAR}``
  expanded from the environment systemd gives the service (``Environment=``, the
  ``EnvironmentFile=``, ``STATE_DIRECTORY``...), the program swapped for the test
  environment's, the state and configuration directories moved below a temporary
  directory, the listening address and the upstream set in the env file as an operator
  would. The process gets what of the sandbox a process can give itself: the
  ``LimitNOFILE=``, the ``UMask=``, ``NoNewPrivileges=`` and ``MemoryDenyWriteExecute=``
  (the kernel's PR_SET_MDWE, Linux 6.3+: no writable and executable mapping, no mapping
  made executable, as systemd's seccomp filter). A pull through it works, the cache lands
  in the state directory, ExecReload's command reloads it, and the unit's KillSignal stops
  it with exit status 0 within TimeoutStopSec.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from registry_mirror.config.loading import load_settings
from tests.support.images import push_image
from tests.support.mirror import assert_log_quiet, mirror_binary
from tests.support.ports import free_port
from tests.support.registry import RegistryProcess
from tests.support.skopeo import skopeo_copy
from tests.support.store import published

DEPLOY: Final = Path(__file__).parents[2] / "deploy"
UNIT: Final = DEPLOY / "registry-mirror.service"
#: Where ``pip install`` into /usr/local puts the program: what the unit runs.
INSTALLED: Final = "/usr/local/bin/registry-mirror"

#: What the unit must say, as the deployment asks for it.
REQUIRED: Final = {
    "Type": "exec",
    "DynamicUser": "yes",
    "StateDirectory": "registry-mirror",
    "ConfigurationDirectory": "registry-mirror",
    "EnvironmentFile": "-/etc/registry-mirror/env",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
    "MemoryMax": "250M",
    "MemoryLow": "16M",
}

#: The checks of ``systemd-analyze security`` (systemd 252) the unit leaves open, and why.
ACCEPTED_EXPOSURE: Final = {
    "PrivateNetwork=": "a mirror serves the network and asks upstreams on it",
    "RestrictAddressFamilies=~AF_(INET|INET6)": "the same",
    "IPAddressDeny=": "upstreams, token realms and CDNs are anywhere; access.allow "
    "restricts clients",
    "RestrictAddressFamilies=~AF_UNIX": "the resolver (nscd, systemd-resolved) and syslog",
    "RootDirectory=/RootImage=": "it runs the Python installed on the host",
    "PrivateUsers=": "needs user namespaces, which hosts restrict; DynamicUser= already "
    "gives a user nothing else owns",
    "ProcSubset=": "the metrics' process collector reads /proc/stat (the boot time)",
    "DeviceAllow=": "char-rtc:r is what ProtectClock= itself leaves",
}
#: The exposure systemd 252 gives those gaps is 1.4 ("OK" is 1.0-4.9); a new gap adds
#: to it, and the list above says which one.
MAX_EXPOSURE: Final = 1.5


@dataclass(frozen=True)
class Unit:
    """A unit file's assignments, in order, per section (systemd.syntax(7))."""

    text: str
    sections: dict[str, list[tuple[str, str]]]

    @classmethod
    def read(cls, path: Path) -> Unit:
        text = path.read_text()
        sections: dict[str, list[tuple[str, str]]] = {}
        current: list[tuple[str, str]] | None = None
        logical = ""
        for raw in text.splitlines():
            line = logical + raw.strip()
            logical = ""
            if not line or line[0] in "#;":
                continue
            if line.endswith("\\"):
                logical = line[:-1] + " "
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), [])
                continue
            assert current is not None, f"assignment outside a section: {line}"
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
        return cls(text, sections)

    def values(self, key: str, section: str = "Service") -> list[str]:
        """Every value of ``key``; an empty assignment resets the list, as in systemd."""
        out: list[str] = []
        for k, v in self.sections.get(section, []):
            if k == key:
                out = [*out, v] if v or key not in LIST_KEYS else []
        return out

    def one(self, key: str, section: str = "Service") -> str:
        values = self.values(key, section)
        assert len(values) == 1, f"{key}= is {values} in [{section}]"
        return values[0]


#: Keys whose empty assignment resets their list (the ones the tests read as lists).
LIST_KEYS: Final = frozenset({"ExecStart", "ExecReload", "Environment", "EnvironmentFile"})


def expand(command: str, environment: dict[str, str]) -> list[str]:
    """A command line as systemd splits it and expands it (systemd.service(5), "Command
    lines"): ``${VAR}`` inside a word, ``$VAR`` as a word of its own split at whitespace."""
    words: list[str] = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            words += environment.get(whole[1], "").split()
            continue
        words.append(re.sub(r"\$\{(\w+)\}", lambda m: environment.get(m[1], ""), word))
    return words


def read_environment_file(path: Path) -> dict[str, str]:
    """``EnvironmentFile=``: ``VAR=value`` lines, ``#`` and ``;`` comments."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = " ".join(shlex.split(value))
    return out


def timespan(value: str) -> float:
    """A systemd time span in seconds, as ``systemd-analyze timespan`` reads it."""
    out = analyze("timespan", value).stdout
    match = re.search(r"μs: (\d+)", out)
    assert match, out
    return int(match[1]) / 1e6


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: Debian's systemd package"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


def rendered(tmp_path: Path) -> Path:
    """The unit with ExecStart's program swapped for the test environment's, nothing else."""
    text = UNIT.read_text()
    original = f"ExecStart={INSTALLED} "
    assert text.count(original) == 1, f"ExecStart= runs another program than {INSTALLED}"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(original, f"ExecStart={mirror_binary()} "))
    changed = [
        (a, b)
        for a, b in zip(text.splitlines(), copy.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert len(changed) == 1, changed
    return copy


def test_unit_says_what_the_deployment_asks() -> None:
    unit = Unit.read(UNIT)
    for key, value in REQUIRED.items():
        assert unit.one(key) == value, key
    assert unit.values("SystemCallFilter")[0] == "@system-service"
    assert int(unit.one("LimitNOFILE")) >= 65536
    assert unit.one("WantedBy", "Install") == "multi-user.target"
    # Longer than the drain the mirror gives requests by default, with room to close.
    settings, _ = load_settings(environ={})
    assert timespan(unit.one("TimeoutStopSec")) >= settings.http.draintimeout + 5


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    proc = analyze("verify", str(rendered(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    unit = rendered(tmp_path)
    proc = analyze("security", "--offline=yes", "--json=short", str(unit))
    assert proc.returncode == 0, proc.stderr
    open_checks = {check["name"] for check in json.loads(proc.stdout) if check["set"] is False}
    assert open_checks == set(ACCEPTED_EXPOSURE)
    proc = analyze("security", "--offline=yes", "--no-pager", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert match, proc.stdout[-2000:]
    assert float(match[1]) <= MAX_EXPOSURE, proc.stdout


#: Run by the unit's command line: what of the sandbox a process can give itself, then exec.
SANDBOX: Final = """
import ctypes, os, resource, sys
nofile, umask, no_new_privs, mdwe = (int(v) for v in sys.argv[1:5])
libc = ctypes.CDLL(None, use_errno=True)
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
if hard != resource.RLIM_INFINITY and hard < nofile:  # systemd may raise it; we may not
    nofile = hard
resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
os.umask(umask)
if no_new_privs and libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit(f"PR_SET_NO_NEW_PRIVS: errno {ctypes.get_errno()}")
if mdwe and libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print("no PR_SET_MDWE in this kernel", file=sys.stderr)
os.execv(sys.argv[5], sys.argv[5:])
"""


def answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def test_the_units_command_line_serves_and_stops_on_its_kill_signal(
    upstream: RegistryProcess, tmp_path: Path
) -> None:
    unit = Unit.read(UNIT)
    # The directories systemd makes (and names in the environment), below tmp_path.
    state = tmp_path / "var/lib" / unit.one("StateDirectory")
    config_dir = tmp_path / "etc" / unit.one("ConfigurationDirectory")
    state.mkdir(parents=True)
    config_dir.mkdir(parents=True)
    # The env file, in the configuration directory, optional ("-"): the example with the
    # example config named, the address and the upstream this test needs.
    (env_file,) = unit.values("EnvironmentFile")
    assert env_file.startswith("-/etc/registry-mirror/"), env_file
    env_path = config_dir / Path(env_file).name
    shutil.copy(DEPLOY / "config.yml", config_dir / "config.yml")
    port = free_port()
    env_path.write_text(
        (DEPLOY / "registry-mirror.env").read_text()
        + f"REGISTRY_MIRROR_CONFIG={config_dir / 'config.yml'}\n"
        + f"REGISTRY_MIRROR_HTTP_ADDR=127.0.0.1:{port}\n"
        + f"REGISTRY_MIRROR_PROXY_REMOTEURL={upstream.url}\n"
    )
    # A system service's environment (systemd.exec(5), "Environment Variables in Spawned
    # Processes"): nothing of the caller's.
    environment = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
        "LANG": "C.UTF-8",
        "HOME": "/",
        "USER": "registry-mirror",
        "LOGNAME": "registry-mirror",
        "SHELL": "/usr/sbin/nologin",
        "INVOCATION_ID": os.urandom(16).hex(),
        "STATE_DIRECTORY": str(state),
        "CONFIGURATION_DIRECTORY": str(config_dir),
    }
    for assignments in unit.values("Environment"):
        for word in shlex.split(assignments):
            name, _, value = word.partition("=")
            environment[name] = value
    environment.update(read_environment_file(env_path))

    (exec_start,) = unit.values("ExecStart")
    argv = expand(exec_start, environment)
    assert argv[0] == INSTALLED
    assert argv[1:] == ["serve", "--root", str(state)]  # the cache is the state directory
    argv[0] = mirror_binary()

    sandbox = [
        unit.one("LimitNOFILE"),
        str(int(unit.one("UMask"), 8)),
        "1" if unit.one("NoNewPrivileges") == "yes" else "0",
        "1" if unit.one("MemoryDenyWriteExecute") == "yes" else "0",
    ]
    log_path = tmp_path / "mirror.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", SANDBOX, *sandbox, *argv],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
        )
    try:
        deadline = time.monotonic() + 20
        while not answers(port):
            assert proc.poll() is None, f"exited {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        if "no PR_SET_MDWE" in log_path.read_text():
            warnings.warn("MemoryDenyWriteExecute= not tried: kernel < 6.3", stacklevel=1)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = int(sandbox[0])
        nofile = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert re.search(rf"Max open files\s+{nofile}\s+{nofile}", limits), limits
        assert "NoNewPrivs:\t1" in Path(f"/proc/{proc.pid}/status").read_text()

        image = push_image(upstream.url, "library/hello", "v1", layers=[4096, 1 << 20])
        skopeo_copy(f"127.0.0.1:{port}", "library/hello:v1", tmp_path / "pulled")
        for digest, data in image.blobs.items():
            assert published(state, digest) == data, digest
        for path in state.rglob("*"):  # UMask=0077: nothing for other users
            assert path.stat().st_mode & 0o077 == 0, path

        # ExecReload: the mirror reloads and goes on serving.
        (exec_reload,) = unit.values("ExecReload")
        subprocess.run(expand(exec_reload, {**environment, "MAINPID": str(proc.pid)}), check=True)
        deadline = time.monotonic() + 10
        while "SIGHUP: reloaded" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert proc.poll() is None and answers(port)

        stop_timeout = timespan(unit.one("TimeoutStopSec"))
        started = time.monotonic()
        proc.send_signal(getattr(signal, unit.one("KillSignal")))
        try:
            code = proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {stop_timeout}s after the KillSignal")
        assert code == 0, log_path.read_text()
        assert time.monotonic() - started < stop_timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_log_quiet(log_path.read_text())
