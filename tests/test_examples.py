"""The apps in examples/ run as their docstrings say: `uvicorn examples.<app>:app` from the repository root, over a
keystile database prepared with the CLI, answering real HTTP requests; SIGTERM writes their usage on the way out."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keystile.keys import format as key_format
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD
from tests.process import KEYSTILE, KeystileServer

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
UVICORN = Path(sys.executable).with_name("uvicorn")
EMAIL = "examples@example.com"


@dataclass
class Deployment:
    """A migrated SQLite database with one user and two keys, made with the keystile CLI."""

    env: dict[str, str]
    database: Path
    key: str  # no scopes
    writer: str  # scope reports:write

    def use_count(self, raw: str) -> int:
        with sqlite3.connect(self.database) as connection:
            key_id = key_format.key_id_of(raw, "ks")
            (count,) = connection.execute("SELECT use_count FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return int(count)


def keystile_cli(env: dict[str, str], *args: str) -> str:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
    result = subprocess.run(
        [str(KEYSTILE), *args], env=inherited | env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    database = tmp_path_factory.mktemp("examples") / "keystile.db"
    env = {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{database}", "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}
    keystile_cli(env, "migrate")
    keystile_cli(env | {"KEYSTILE_PASSWORD": PASSWORD}, "users", "create", "--email", EMAIL)
    key = keystile_cli(env, "keys", "create", "--email", EMAIL, "--name", "plain", "--rate-limit", "100/60")
    writer = keystile_cli(env, "keys", "create", "--email", EMAIL, "--name", "writer", "--scopes", "reports:write")
    return Deployment(env, database, key, writer)


class ExampleServer(KeystileServer):
    """`uvicorn examples.<module>:app` on a free port, run from the repository root as the examples say."""

    def __init__(self, module: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(env, log_dir)
        self.module = module

    def start(self) -> None:
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
        command = [str(UVICORN), f"examples.{self.module}:app", "--host", self.host, "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=inherited | self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_healthy()  # GET /healthz, which every example leaves open


@pytest.fixture(params=["starlette_app", "litestar_app", "fastapi_app"])
def example(request: pytest.FixtureRequest, deployment: Deployment, tmp_path: Path) -> Iterator[ExampleServer]:
    with ExampleServer(request.param, deployment.env, tmp_path) as server:
        yield server


def test_an_example_answers_401_without_a_key_and_200_with_one(example: ExampleServer, deployment: Deployment) -> None:
    uses_before = deployment.use_count(deployment.key)
    with httpx.Client(base_url=example.url, timeout=10.0) as http:
        missing = http.get("/api/whoami")
        invalid = http.get("/api/whoami", headers={"X-API-Key": "invalid-key-here"})
        valid = http.get("/api/whoami", headers={"X-API-Key": deployment.key})
    status = example.stop()

    assert missing.status_code == 401, example.log
    assert missing.json() == {"detail": "API key required (header X-API-Key)"}
    assert missing.headers["WWW-Authenticate"] == "APIKey"
    assert invalid.status_code == 401
    assert invalid.json() == {"detail": "Invalid or expired API key"}
    assert valid.status_code == 200, valid.text
    assert valid.json()["scopes"] == []
    assert valid.headers["RateLimit-Policy"] == '"key";q=100;w=60'
    # uvicorn re-raises SIGTERM once it has shut down gracefully, so the status is -15 rather than 0.
    assert status in {0, -signal.SIGTERM}, example.log
    assert "Application shutdown complete." in example.log
    assert deployment.use_count(deployment.key) == uses_before + 1  # written on shutdown, not by the 5 s timer


@pytest.mark.parametrize("module", ["litestar_app", "fastapi_app"])
def test_a_scoped_example_route_refuses_a_key_without_the_scope(
    module: str, deployment: Deployment, tmp_path: Path
) -> None:
    with ExampleServer(module, deployment.env, tmp_path) as server, httpx.Client(base_url=server.url) as http:
        refused = http.post("/api/reports", headers={"X-API-Key": deployment.key})
        written = http.post("/api/reports", headers={"X-API-Key": deployment.writer})

    assert refused.status_code == 403, server.log
    assert refused.json()["detail"] == "API key lacks required scope: reports:write"
    assert written.status_code in {200, 201}, written.text


def test_the_client_example_verifies_keys_through_a_real_keystile_serve(deployment: Deployment, tmp_path: Path) -> None:
    verifier = keystile_cli(
        deployment.env, "keys", "create", "--email", EMAIL, "--name", "gateway", "--scopes", "keys:verify"
    )
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}

    with KeystileServer(deployment.env, tmp_path) as server:

        def run(key: str) -> subprocess.CompletedProcess[str]:
            env = inherited | {"KEYSTILE_URL": server.url, "KEYSTILE_VERIFIER_KEY": verifier}
            command = [sys.executable, "-m", "examples.client_verify", key]
            return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)

        allowed, lacking = run(deployment.writer), run(deployment.key)

    assert (allowed.returncode, allowed.stdout.strip()) == (0, "VALID"), allowed.stderr
    assert (lacking.returncode, lacking.stdout.strip()) == (1, "INSUFFICIENT_SCOPES"), lacking.stderr
