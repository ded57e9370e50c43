"""The wheel and the sdist, built as ``make dist`` builds them, installed where nothing else is.

``python -m build`` (PyPA's front end, the backend in an isolated environment) makes the
sdist from the checkout, then the wheel from the sdist. The sdist holds what a rebuild
needs and nothing of a working tree (no venv, no caches); the wheel holds the package,
the console script and the metadata pyproject.toml declares, with the version of
``registry_mirror.__version__``, its one source. The wheel installed into a fresh venv
(no system site packages; its dependencies from the package index) answers
``--version`` as the program and as ``python -m registry_mirror``, and serves: a pull
through it from a real upstream, then SIGTERM, exit status 0.
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import Any, Final

import pytest

import registry_mirror
from tests.support.images import push_image
from tests.support.mirror import MirrorProcess, assert_log_quiet
from tests.support.registry import RegistryProcess
from tests.support.skopeo import skopeo_copy
from tests.support.store import published

ROOT: Final = Path(__file__).parents[2]
#: Path parts that belong to a working tree, never to a distribution.
WORKING_TREE: Final = frozenset(
    {".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".git", "dist"}
)


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def sources() -> set[str]:
    """The package's modules, relative to ``src``."""
    src = ROOT / "src"
    return {
        path.relative_to(src).as_posix()
        for path in (src / "registry_mirror").rglob("*.py")
        if "__pycache__" not in path.parts
    }


def run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        # Nothing of the checkout on the path of the installed program.
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, f"{args} -> {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel), built by ``python -m build`` from the checkout."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out, timeout=300)
    version = registry_mirror.__version__
    sdist, wheel = (
        out / f"registry_mirror-{version}.tar.gz",
        out / (f"registry_mirror-{version}-py3-none-any.whl"),
    )
    assert sorted(out.iterdir()) == sorted([sdist, wheel])
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site packages) with the wheel installed: its ``bin``."""
    home = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", home / "venv", cwd=home)
    assert "include-system-site-packages = false" in (home / "venv" / "pyvenv.cfg").read_text()
    python = home / "venv" / "bin" / "python"
    # This environment's pip installs into it (no copy of pip to set up there).
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", dist[1], cwd=home)
    return home / "venv" / "bin"


def test_one_version() -> None:
    project = pyproject()
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "registry_mirror.__version__"
    assert registry_mirror.__version__ == "0.1.0"


def test_sdist_holds_what_a_rebuild_needs(dist: tuple[Path, Path]) -> None:
    sdist, _ = dist
    top = PurePosixPath(sdist.name.removesuffix(".tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {PurePosixPath(m.name) for m in tar.getmembers() if m.isfile()}
    assert {top / "pyproject.toml", top / "README.md", top / "PKG-INFO"} <= names
    packaged = {str(n.relative_to(top / "src")) for n in names if n.is_relative_to(top / "src")}
    assert sources() <= packaged, sorted(sources() - packaged)
    for name in names:
        assert not WORKING_TREE & set(name.parts), name
        assert name.suffix not in {".pyc", ".pyo", ".so"}, name


def metadata(wheel: Path) -> tuple[set[str], Message, str]:
    """The wheel's files, its METADATA and its entry_points.txt."""
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
        info = f"registry_mirror-{registry_mirror.__version__}.dist-info"
        meta = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    return files, meta, entry_points


def test_wheel_holds_the_package_its_script_and_its_metadata(dist: tuple[Path, Path]) -> None:
    files, meta, entry_points = metadata(dist[1])
    assert sources() <= files, sorted(sources() - files)
    assert all(f.startswith("registry_mirror") for f in files), sorted(files)
    assert "[console_scripts]\nregistry-mirror = registry_mirror.cli:main" in entry_points
    project = pyproject()["project"]
    assert meta["Name"] == "registry-mirror"
    assert meta["Version"] == registry_mirror.__version__ == "0.1.0"
    assert meta["Requires-Python"] == project["requires-python"]
    assert meta["License-Expression"] == project["license"]
    requires = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert requires == project["dependencies"]


def test_installed_wheel_answers_its_version(venv: Path, tmp_path: Path) -> None:
    expected = f"registry-mirror {registry_mirror.__version__}"
    assert run(venv / "registry-mirror", "--version", cwd=tmp_path).stdout.strip() == expected
    python = venv / "python"
    out = run(python, "-m", "registry_mirror", "--version", cwd=tmp_path).stdout.strip()
    assert out == expected
    where = run(
        python, "-c", "import registry_mirror; print(registry_mirror.__file__)", cwd=tmp_path
    )
    assert Path(where.stdout.strip()).is_relative_to(venv.parent), where.stdout


def test_installed_wheel_serves(venv: Path, upstream: RegistryProcess, tmp_path: Path) -> None:
    mirror = MirrorProcess(tmp_path / "cache", upstream.url, binary=str(venv / "registry-mirror"))
    with mirror:
        image = push_image(upstream.url, "library/hello", "v1", layers=[4096, 1 << 20])
        skopeo_copy(mirror.host, "library/hello:v1", tmp_path / "pulled")
        for digest, data in image.blobs.items():
            assert published(mirror.root, digest) == data, digest
        assert mirror.stop() == 0, mirror.log()
    assert_log_quiet(mirror.log())
