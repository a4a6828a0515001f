"""The distributions `python -m build` makes are complete: the wheel, built from the sdist, installed with its
dependencies in a fresh venv (nothing of this checkout on its path), migrates, serves and verifies keys.

What proves completeness is both the wheel's file list (every file of the package directory, py.typed and the
Alembic scripts included) and the installed copy doing the work: `keystile migrate` finds its migrations, `keystile
serve` answers /healthz and serves /docs with the Swagger UI assets of the swagger-ui-bundle dependency.

The build runs without isolation, with the venv's own `build` and `hatchling` (the `test` extra), so it needs no
download; installing the wheel's dependencies does use pip's index, as any install does (~15 s with pip's cache).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import httpx
import pytest

from keystile import __version__
from tests import backends, process
from tests.process import KeystileServer, register_and_issue_key

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "keystile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_SECONDS = 120
INSTALL_SECONDS = 300

pytestmark = pytest.mark.process


def package_files() -> set[str]:
    """The package's files as a wheel names them (`keystile/...`): everything under src/keystile but bytecode."""
    return {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build`: the sdist, then the wheel built from that sdist (so a file missing from the sdist makes an
    incomplete wheel and fails below)."""
    for module in ("build", "hatchling"):
        try:
            __import__(module)
        except ImportError as error:
            backends.unavailable(f"the build tool {module!r} (pip install -e '.[test]')", error)
    outdir = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return outdir


def only(directory: Path, pattern: str) -> Path:
    (path,) = directory.glob(pattern)
    return path


def requirement_name(requirement: str) -> str:
    """`uvicorn[standard]>=0.30,<1` -> `uvicorn`: the metadata writes version bounds in its own order."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match[0].lower()


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        return Parser().parsestr(archive.read(f"keystile-{__version__}.dist-info/METADATA").decode())


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (not this one, no system site-packages) with the wheel and its declared dependencies."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=INSTALL_SECONDS)
    wheel = only(dist, "*.whl")
    install = subprocess.run(
        [str(path / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=INSTALL_SECONDS,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return path


def test_the_wheel_holds_every_file_of_the_package_and_nothing_else(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "*.whl")) as archive:
        names = set(archive.namelist())
    packaged = {name for name in names if not name.startswith(f"keystile-{__version__}.dist-info/")}

    assert packaged == package_files()
    assert {
        "keystile/py.typed",
        "keystile/migrations/env.py",
        "keystile/migrations/script.py.mako",
        "keystile/migrations/versions/0001_initial_schema.py",
    } <= packaged


def test_the_wheel_metadata_declares_version_dependencies_classifiers_and_urls(dist: Path) -> None:
    metadata = wheel_metadata(only(dist, "*.whl"))

    assert metadata["Name"] == "keystile"
    assert metadata["Version"] == __version__
    assert metadata["Requires-Python"] == PYPROJECT["project"]["requires-python"]
    requires = {requirement_name(requirement) for requirement in metadata.get_all("Requires-Dist") or []}
    assert {requirement_name(requirement) for requirement in PYPROJECT["project"]["dependencies"]} <= requires
    assert "swagger-ui-bundle" in requires  # the /docs assets come from it
    classifiers = set(metadata.get_all("Classifier") or [])
    assert {"Typing :: Typed", "Framework :: FastAPI", "Programming Language :: Python :: 3.11"} <= classifiers
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Changelog", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    assert metadata["License-Expression"] == "MIT"


def test_the_version_has_one_source_and_a_changelog_entry() -> None:
    """`keystile/__init__.py` holds the version; pyproject reads it from there (hatch's version source), and the
    changelog has a section for it."""
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "src/keystile/__init__.py"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(__version__)}\]", changelog, re.MULTILINE), "no section for this version"


def test_the_sdist_holds_the_sources_docs_and_deployment_files_and_no_local_state(dist: Path) -> None:
    sdist = only(dist, "*.tar.gz")
    top = f"keystile-{__version__}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(top) for name in archive.getnames()}

    assert {f"src/{name}" for name in package_files()} <= names
    expected = {"pyproject.toml", "README.md", "CHANGELOG.md", "docs/DEPLOYMENT.md", "Dockerfile", "compose.yaml"}
    assert expected <= names
    assert any(name.startswith("tests/") for name in names)
    local = [name for name in names if re.search(r"(^|/)(\.venv|\.git|__pycache__)(/|$)|\.(db|secret)$", name)]
    assert local == []


def test_the_installed_wheel_migrates_serves_docs_and_verifies_keys(
    venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = venv / "bin" / "keystile"
    env = {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'keystile.db'}"}

    def keystile(*args: str) -> subprocess.CompletedProcess[str]:
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
        return subprocess.run(
            [str(installed), *args],
            cwd=tmp_path,
            env=inherited | env | {"PYTHONPATH": ""},
            capture_output=True,
            text=True,
            timeout=60,
        )

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import keystile; print(keystile.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), "the installed copy, not this checkout"
    assert (Path(where.stdout.strip()).parent / "py.typed").exists()
    assert keystile("--version").stdout.strip() == f"keystile {__version__}"
    migrate = keystile("migrate")
    assert migrate.returncode == 0, migrate.stderr

    monkeypatch.setattr(process, "KEYSTILE", installed)  # KeystileServer runs the installed `keystile serve`
    with KeystileServer(env | {"PYTHONPATH": ""}, cwd=tmp_path) as server:
        _, created = register_and_issue_key(server.url)
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            docs = http.get("/docs")
            assert docs.status_code == 200
            for asset in re.findall(r"""(?:src|href)=['"](/docs/assets/[^'"]+)['"]""", docs.text):
                response = http.get(asset)
                assert response.status_code == 200, asset
                assert len(response.content) > 100, asset
            assert "/docs/assets/swagger-ui-bundle.js" in docs.text
            assert http.get("/openapi.json").json()["info"]["version"] == __version__
            assert http.get("/data/export", headers={"X-API-Key": created["key"]}).status_code == 200

    verify = keystile("keys", "verify", created["key"])
    assert (verify.returncode, verify.stdout.strip()) == (0, "VALID")
    doctor = keystile("doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
