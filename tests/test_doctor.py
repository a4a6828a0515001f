"""`keystile doctor` run as a subprocess, as an operator runs it: one line per check, exit 1 only when one fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from keystile import migrations
from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.process import KEYSTILE, free_port

LINE = re.compile(r"^(ok  |warn|fail) (?P<name>[a-z ]+): (?P<message>.+)$")


class Doctor:
    """`keystile doctor` in a directory of its own, with only the KEYSTILE_* settings a test gives."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path
        self.database = tmp_path / "keystile.db"
        self.secret_file = tmp_path / "keystile.secret"
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
        self.env["KEYSTILE_DATABASE_URL"] = f"sqlite+aiosqlite:///{self.database}"

    def keystile(self, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KEYSTILE), *args], cwd=self.cwd, env=self.env | settings, capture_output=True, text=True, timeout=60
        )

    def run(self, expected_status: int, **settings: str) -> dict[str, tuple[str, str]]:
        """The checks by name, as (status, message); every line of the output must be a check."""
        result = self.keystile("doctor", **settings)
        assert result.returncode == expected_status, result.stdout + result.stderr
        checks = {}
        for line in result.stdout.splitlines():
            match = LINE.match(line)
            assert match, f"not a check line: {line!r}"
            checks[match["name"]] = (match[1].strip(), match["message"])
        return checks

    def set_up(self, template: Path | None = None) -> None:
        """A healthy embedded deployment: migrated (by `keystile migrate`, or a private copy of the suite's migrated
        `template`, which is faster), and the secret created as every command but `migrate` creates it."""
        if template is None:
            assert self.keystile("migrate").returncode == 0
        else:
            shutil.copyfile(template, self.database)
            self.database.chmod(0o600)
        assert self.keystile("keys", "list").returncode == 0
        assert self.secret_file.exists()


@pytest.fixture
def doctor(tmp_path: Path) -> Doctor:
    return Doctor(tmp_path)


@pytest.fixture
def ready(doctor: Doctor, sqlite_template: Path) -> Doctor:
    doctor.set_up(sqlite_template)
    return doctor


@pytest.mark.redis
def test_a_healthy_sqlite_deployment_is_all_ok(doctor: Doctor, redis_url: str) -> None:
    doctor.set_up()

    checks = doctor.run(0, KEYSTILE_REDIS_URL=redis_url)

    assert {name: status for name, (status, _) in checks.items()} == {
        "secret key": "ok",
        "secret file": "ok",
        "database": "ok",
        "database file": "ok",
        "redis": "ok",
        "trusted proxies": "ok",
    }
    assert checks["database"][1].endswith("schema is current")


def test_a_missing_database_fails_and_is_not_created(doctor: Doctor) -> None:
    checks = doctor.run(1)

    assert checks["database"] == ("fail", f"there is no keystile database at {doctor.database}: run `keystile migrate`")
    assert checks["secret key"][0] == "warn"  # not there yet either: the first start creates it
    assert not doctor.database.exists()
    assert not doctor.secret_file.exists()


def test_a_database_without_the_schema_says_to_migrate(doctor: Doctor) -> None:
    doctor.database.touch(mode=0o600)

    checks = doctor.run(1)

    status, message = checks["database"]
    assert status == "fail"
    assert message.endswith("has no keystile schema: run `keystile migrate`")


def test_an_older_schema_says_to_migrate(doctor: Doctor) -> None:
    migrations.upgrade(f"sqlite+aiosqlite:///{doctor.database}", "0001")

    checks = doctor.run(1)

    assert checks["database"][0] == "fail"
    assert checks["database"][1].endswith("has an older keystile schema: run `keystile migrate`")


def test_a_world_readable_secret_file_fails_with_the_chmod_to_run(ready: Doctor) -> None:
    ready.secret_file.chmod(0o644)

    checks = ready.run(1)

    assert checks["secret file"] == (
        "fail",
        f"{ready.secret_file} is mode 0644: readable by others; run `chmod 600 {ready.secret_file}`",
    )
    assert checks["database file"][0] == "ok"


def test_a_group_readable_database_file_fails(ready: Doctor) -> None:
    ready.database.chmod(0o640)

    checks = ready.run(1)

    status, message = checks["database file"]
    assert status == "fail"
    assert message.endswith(f"run `chmod 600 {ready.database}`")


def test_an_unreachable_redis_fails_without_showing_its_password(ready: Doctor) -> None:
    port = free_port()

    result = ready.keystile("doctor", KEYSTILE_REDIS_URL=f"redis://:hunter2-redis@127.0.0.1:{port}/0")

    assert result.returncode == 1
    assert f"fail redis: redis://:***@127.0.0.1:{port}/0 does not answer: " in result.stdout
    assert "check that Redis is running" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_trusting_every_address_is_a_warning(ready: Doctor) -> None:
    checks = ready.run(0, KEYSTILE_TRUSTED_PROXIES="10.0.0.0/8,0.0.0.0/0")

    status, message = checks["trusted proxies"]
    assert status == "warn"
    assert message.startswith("0.0.0.0/0 believes anyone's X-Forwarded-For")


def test_sane_trusted_proxies_are_ok(ready: Doctor) -> None:
    checks = ready.run(0, KEYSTILE_TRUSTED_PROXIES="10.0.0.0/8, fd00::/8")

    assert checks["trusted proxies"] == ("ok", "X-Forwarded-For believed from 10.0.0.0/8, fd00::/8")


def test_a_configured_secret_is_checked_and_never_printed(ready: Doctor) -> None:
    good = ready.keystile("doctor", KEYSTILE_SECRET_KEY=TEST_SECRET_KEY)
    weak = ready.keystile("doctor", KEYSTILE_SECRET_KEY="changeme" * 5)
    short = ready.keystile("doctor", KEYSTILE_SECRET_KEY="changeme")

    assert good.returncode == 0
    assert f"ok   secret key: KEYSTILE_SECRET_KEY holds {len(TEST_SECRET_KEY)} bytes" in good.stdout
    assert "secret file" not in good.stdout  # the file beside the database is not the secret in use
    assert weak.returncode == 0
    assert "warn secret key: KEYSTILE_SECRET_KEY has only 7 different characters" in weak.stdout
    assert short.returncode == 1
    assert short.stdout == "fail settings: KEYSTILE_SECRET_KEY: Value error, must be at least 32 bytes\n"
    everything = "".join(result.stdout + result.stderr for result in (good, weak, short))
    assert TEST_SECRET_KEY not in everything
    assert "changeme" not in everything
    assert ready.secret_file.read_text().strip() not in everything


def test_a_short_secret_file_fails(ready: Doctor) -> None:
    ready.secret_file.write_text("too short\n")

    checks = ready.run(1)

    assert checks["secret key"][0] == "fail"
    assert checks["secret key"][1].startswith(f"{ready.secret_file} holds 9 bytes, fewer than 32")


def test_postgresql_without_a_secret_key_fails(doctor: Doctor) -> None:
    port = free_port()
    url = f"postgresql+asyncpg://keystile:hunter2-db@127.0.0.1:{port}/keystile"

    result = doctor.keystile("doctor", KEYSTILE_DATABASE_URL=url)

    assert result.returncode == 1
    assert "fail secret key: KEYSTILE_SECRET_KEY is required unless the database is SQLite" in result.stdout
    assert f"fail database: cannot connect to postgresql+asyncpg://keystile:***@127.0.0.1:{port}/keystile" in (
        result.stdout
    )
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.postgres
def test_postgresql_before_and_after_migrating(doctor: Doctor) -> None:
    url = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_doctor")
    settings = {"KEYSTILE_DATABASE_URL": url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}

    before = doctor.run(1, **settings)
    assert doctor.keystile("migrate", **settings).returncode == 0
    after = doctor.run(0, **settings)

    assert before["database"] == ("fail", f"{url} has no keystile schema: run `keystile migrate`")
    assert after["database"] == ("ok", f"{url} answers; schema is current")
    assert "database file" not in after


def test_doctor_is_listed_in_the_help() -> None:
    result = subprocess.run([str(KEYSTILE), "--help"], capture_output=True, text=True, check=True)
    assert "doctor" in result.stdout
