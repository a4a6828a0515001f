"""The deployment files run what the suite runs, and a restored PostgreSQL backup verifies the same keys.

Docker does not run where the suite runs, so the Dockerfile and compose.yaml are checked against the code instead:
the image's command is the `keystile` console script with options `serve` has, every setting they name is a keystile
setting, and the commands themselves (`migrate`, `serve`, the image's health check) run here with compose.yaml's
settings against the suite's PostgreSQL and Redis; only the host names and passwords differ (docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
import yaml
from sqlalchemy.engine import make_url

from keystile.cli import app as cli_app
from keystile.settings import Settings
from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD
from tests.private_postgres import postgres_bin
from tests.process import KEYSTILE, KeystileServer, register_and_issue_key

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SETTING_NAMES = {f"KEYSTILE_{name.upper()}" for name in Settings.model_fields}
COMMANDS = typer.main.get_command(cli_app).commands
IMAGE_PORT = "8000"
OTHER_SECRET_KEY = "another-secret-key-0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(keyword.upper(), " ".join(rest.split())) for keyword, _, rest in (line.partition(" ") for line in lines)]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    start = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def instruction(keyword: str) -> str:
    (arguments,) = [rest for name, rest in final_stage() if name == keyword]
    return arguments


def exec_form(keyword: str) -> list[str]:
    """The JSON array of ENTRYPOINT, CMD or HEALTHCHECK ... CMD (exec form: no shell between Docker and keystile)."""
    arguments = instruction(keyword)
    return list(json.loads(arguments[arguments.index("[") :]))


def image_env() -> dict[str, str]:
    pairs = (rest.split() for name, rest in final_stage() if name == "ENV")
    return dict(pair.split("=", 1) for pair in (item for items in pairs for item in items))


def compose_environment(service: str) -> dict[str, str]:
    return {name: str(value) for name, value in COMPOSE["services"][service]["environment"].items()}


def interpolated(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:?message}` and `${NAME:-default}` with `variables` (the test's .env)."""
    return re.sub(r"\$\{(\w+)(?::?[?-][^}]*)?\}", lambda match: variables[match[1]], value)


def serve_options() -> set[str]:
    return {option for param in COMMANDS["serve"].params for option in param.opts}


def test_the_image_installs_the_built_wheel_on_a_slim_python_and_runs_as_an_unprivileged_user() -> None:
    base = re.fullmatch(r"python:(\d+)\.(\d+)-slim(?: AS \w+)?", instruction("FROM"))
    assert base, instruction("FROM")
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum
    assert (int(base[1]), int(base[2])) >= (int(minimum[1]), int(minimum[2]))

    builds = [rest for name, rest in dockerfile() if name == "RUN" and "python -m build" in rest]
    assert builds, "the wheel is built by `python -m build`, as tests/test_packaging.py builds it"
    assert any(name == "RUN" and re.search(r"pip install \S*\.whl", rest) for name, rest in final_stage())

    keywords = [name for name, _ in final_stage()]
    user = instruction("USER")
    assert user.partition(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_the_image_runs_the_console_script_with_options_serve_has() -> None:
    entrypoint, command = exec_form("ENTRYPOINT"), exec_form("CMD")

    assert PYPROJECT["project"]["scripts"] == {"keystile": "keystile.cli:app"}
    assert entrypoint == [KEYSTILE.name] == ["keystile"]  # the program tests/process.py starts
    assert command[0] == "serve"
    assert {argument for argument in command if argument.startswith("--")} <= serve_options()
    assert command[command.index("--port") + 1] == IMAGE_PORT == instruction("EXPOSE")
    assert COMPOSE["services"]["migrate"]["command"][0] in COMMANDS


def test_the_health_check_asks_healthz_on_the_served_port() -> None:
    check = exec_form("HEALTHCHECK")

    assert check[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{IMAGE_PORT}/healthz" in check[2]  # what KeystileServer polls for readiness


def test_every_setting_the_image_and_compose_name_is_a_keystile_setting() -> None:
    image, served, migrating = image_env(), compose_environment("keystile"), compose_environment("migrate")

    named = {name for name in [*image, *served, *COMPOSE["x-keystile-environment"]] if name.startswith("KEYSTILE_")}
    assert named <= SETTING_NAMES
    assert served == migrating  # one anchor: `migrate` works on the database `serve` uses
    # The image's default SQLite file is in its working directory, the volume its user owns.
    sqlite = Path(make_url(image["KEYSTILE_DATABASE_URL"]).database or "")
    assert str(sqlite.parent) == instruction("WORKDIR") == json.loads(instruction("VOLUME"))[0]


def test_the_compose_urls_point_at_its_services_with_the_suites_drivers() -> None:
    served = compose_environment("keystile")
    postgres = compose_environment("postgres")
    database = make_url(interpolated(served["KEYSTILE_DATABASE_URL"], {"POSTGRES_PASSWORD": "x"}))
    redis = make_url(served["KEYSTILE_REDIS_URL"])

    assert database.drivername == make_url(backends.POSTGRES_URL).drivername
    assert (database.host, database.username, database.database) == (
        "postgres",
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_DB"],
    )
    assert database.password == "x"  # the password is compose's POSTGRES_PASSWORD, the one the database gets
    assert postgres["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}"
    assert (redis.drivername, redis.host) == (make_url(backends.REDIS_URL).drivername, "redis")
    assert {"postgres", "redis"} <= set(COMPOSE["services"])
    assert served["KEYSTILE_SECRET_KEY"].startswith("${KEYSTILE_SECRET_KEY:?")  # never a default in the file


def test_the_guide_says_what_is_checked_here() -> None:
    guide = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    assert "tests/test_deployment.py" in guide
    assert "Docker" in guide


class ImageServer(KeystileServer):
    """The image's ENTRYPOINT + CMD, run by this venv's `keystile`, with a free port in place of the image's."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        super().__init__(env, cwd)
        image = [*exec_form("ENTRYPOINT"), *exec_form("CMD")]
        self.command = [str(KEYSTILE), *(str(self.port) if part == IMAGE_PORT else part for part in image[1:])]

    def start(self) -> None:
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=inherited | self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_healthy()


def keystile(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
    return subprocess.run(
        [str(KEYSTILE), *args], cwd=cwd, env=inherited | env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.process
def test_the_compose_commands_serve_with_the_compose_settings(tmp_path: Path, redis_url: str) -> None:
    """compose.yaml's environment as written, but for the host names (the suite's PostgreSQL and Redis) and the .env."""
    database_url = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_compose")
    env = {
        name: interpolated(value, {"KEYSTILE_SECRET_KEY": TEST_SECRET_KEY, "POSTGRES_PASSWORD": "unused"})
        for name, value in compose_environment("keystile").items()
    } | {"KEYSTILE_DATABASE_URL": database_url, "KEYSTILE_REDIS_URL": redis_url}

    migrated = keystile(COMPOSE["services"]["migrate"]["command"], env, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    # The guide's first step: with registration closed, the first (admin) user comes from the command line.
    admin = keystile(
        ["users", "create", "--email", "admin@example.com", "--admin"], env | {"KEYSTILE_PASSWORD": PASSWORD}, tmp_path
    )
    assert admin.returncode == 0, admin.stderr

    with ImageServer(env, cwd=tmp_path) as server:
        check = exec_form("HEALTHCHECK")
        probe = [sys.executable, *check[1:-1], check[-1].replace(f":{IMAGE_PORT}/", f":{server.port}/")]
        assert subprocess.run(probe, timeout=10).returncode == 0
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            assert http.get("/readyz").json() == {"status": "ok"}  # PostgreSQL and Redis both answer
            registration = http.post("/auth/register", json={"email": "eve@example.com", "password": PASSWORD})
            assert registration.status_code == 403
            token = http.post("/auth/token", data={"username": "admin@example.com", "password": PASSWORD})
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            key = http.post("/keys/", json={"name": "gateway"}, headers=headers).json()["key"]
            assert http.get("/data/export", headers={"X-API-Key": key}).status_code == 200

    doctor = keystile(["doctor"], env, tmp_path)
    assert doctor.returncode == 0, doctor.stdout


def postgres_tool(name: str) -> str:
    """pg_dump or pg_restore of the newest installed PostgreSQL (at least the server's version), else from PATH."""
    bindir = postgres_bin()
    found = str(bindir / name) if bindir is not None and (bindir / name).exists() else shutil.which(name)
    if found is None:
        backends.unavailable(name, FileNotFoundError(name))
        raise AssertionError("unreachable")  # unavailable() skips or fails
    return found


def libpq_url(database_url: str) -> str:
    return database_url.replace("+asyncpg", "")


@pytest.mark.postgres
@pytest.mark.process
def test_a_restored_postgresql_dump_verifies_the_same_keys_with_the_same_secret_only(tmp_path: Path) -> None:
    """docs/DEPLOYMENT.md, "Backups": the dump is taken while serving, restored into a new database, and checked with
    `keystile keys verify`. The pepper comes from the secret key, so another secret finds none of the keys."""
    source = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_backup")
    restored = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_restored")
    dump = tmp_path / "keystile.dump"

    with KeystileServer({"KEYSTILE_DATABASE_URL": source, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}, tmp_path) as server:
        headers, kept = register_and_issue_key(server.url)
        with httpx.Client(base_url=server.url, timeout=10.0, headers=headers) as http:
            revoked: dict[str, Any] = http.post("/keys/", json={"name": "leaked"}).json()
            assert http.post(f"/keys/{revoked['id']}/revoke").status_code == 200
        backup = [postgres_tool("pg_dump"), "--format=custom", f"--file={dump}", libpq_url(source)]
        subprocess.run(backup, check=True, capture_output=True, timeout=60)

    restore = [
        postgres_tool("pg_restore"),
        "--no-owner",
        "--exit-on-error",
        f"--dbname={libpq_url(restored)}",
        str(dump),
    ]
    subprocess.run(restore, check=True, capture_output=True, timeout=60)

    def verify(key: str, secret: str) -> str:
        env = {"KEYSTILE_DATABASE_URL": restored, "KEYSTILE_SECRET_KEY": secret}
        return keystile(["keys", "verify", key], env, tmp_path).stdout.strip()

    assert verify(kept["key"], TEST_SECRET_KEY) == "VALID"
    assert verify(revoked["key"], TEST_SECRET_KEY) == "REVOKED"
    assert verify(kept["key"], OTHER_SECRET_KEY) == "NOT_FOUND"
