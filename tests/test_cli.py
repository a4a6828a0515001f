"""The `keystile` command line (API.md section 5), run as a subprocess against a SQLite file, checked in the file."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keystile import __version__, migrations
from keystile.keys.format import (
    CHECKSUM_LENGTH,
    checksum,
    derive_pepper,
    generate_key,
    hash_key,
    secret_scanner_regex,
)
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD, wrong_checksum
from tests.process import KEYSTILE, KeystileServer, free_port

KEY_PATTERN = re.compile(secret_scanner_regex())


class Cli:
    """`keystile` with only this test's KEYSTILE_* settings, and the SQLite file it works on."""

    def __init__(self, tmp_path: Path) -> None:
        self.database = tmp_path / "keystile.db"
        self.secret_file = tmp_path / "keystile.secret"
        self.cwd = tmp_path
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
        self.env = inherited | {
            "KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{self.database}",
            "KEYSTILE_PASSWORD": PASSWORD,
        }

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KEYSTILE), *args],
            cwd=self.cwd,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, f"keystile {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        return result.stdout

    def rows(self, query: str, *params: Any) -> list[sqlite3.Row]:
        with closing(sqlite3.connect(self.database)) as connection:
            connection.row_factory = sqlite3.Row
            return connection.execute(query, params).fetchall()

    def create_key(self, email: str = "alice@example.com", *options: str) -> str:
        return self.ok("keys", "create", "--email", email, "--name", "cli-key", *options).strip()

    def key_row(self, raw: str) -> sqlite3.Row:
        (row,) = self.rows("SELECT * FROM api_keys WHERE key_id = ?", raw.split("_")[-2])
        return row


@pytest.fixture
def cli(tmp_path: Path, sqlite_template: Path) -> Cli:
    """A migrated database (a copy of the suite's template: `keystile migrate` has its own test)."""
    runner = Cli(tmp_path)
    shutil.copyfile(sqlite_template, runner.database)
    return runner


@pytest.fixture
def alice(cli: Cli) -> Cli:
    cli.ok("users", "create", "--email", "alice@example.com")
    return cli


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_migrate_creates_every_table_in_a_new_sqlite_file_and_running_it_again_changes_nothing(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    assert not cli.database.exists()
    assert cli.ok("migrate").strip() == "database is up to date"
    tables = {row["name"] for row in cli.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "api_keys", "audit_events", "alembic_version"} <= tables
    (version,) = cli.rows("SELECT version_num FROM alembic_version")
    assert cli.ok("migrate").strip() == "database is up to date"
    assert cli.rows("SELECT version_num FROM alembic_version") == [version]


def test_users_create_stores_the_user_with_an_argon2_hash_of_the_password_from_the_environment(cli: Cli) -> None:
    output = cli.ok("users", "create", "--email", "Alice@Example.com")
    assert "created user 1" in output
    (user,) = cli.rows("SELECT * FROM users")
    assert (user["id"], user["email"], user["is_admin"]) == (1, "alice@example.com", 0)
    assert user["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in user["password_hash"]
    (event,) = cli.rows("SELECT action, actor_id FROM audit_events")
    assert tuple(event) == ("user.registered", 1)


def test_users_create_with_admin_makes_an_administrator(cli: Cli) -> None:
    output = cli.ok("users", "create", "--email", "root@example.com", "--admin")
    assert "as admin" in output
    assert [tuple(row) for row in cli.rows("SELECT email, is_admin FROM users")] == [("root@example.com", 1)]


@pytest.mark.parametrize(
    "second_email",
    [pytest.param("alice@example.com", id="same-spelling"), pytest.param("ALICE@example.COM", id="other-case")],
)
def test_users_create_with_a_taken_email_exits_1_with_a_clear_message_and_adds_nobody(
    alice: Cli, second_email: str
) -> None:
    result = alice.run("users", "create", "--email", second_email)
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(alice.rows("SELECT id FROM users")) == 1


@pytest.mark.parametrize(
    ("password", "message"),
    [
        pytest.param("short", "password: String should have at least 8 characters", id="under-8"),
        pytest.param("p" * 129, "password: String should have at most 128 characters", id="over-128"),
    ],
)
def test_users_create_refuses_a_password_outside_8_to_128_characters(cli: Cli, password: str, message: str) -> None:
    result = cli.run("users", "create", "--email", "alice@example.com", env={"KEYSTILE_PASSWORD": password})
    assert result.returncode == 2
    assert message in result.stderr
    assert password not in result.stderr
    assert cli.rows("SELECT id FROM users") == []


def test_users_create_refuses_an_address_that_is_not_an_email(cli: Cli) -> None:
    result = cli.run("users", "create", "--email", "not-an-email")
    assert result.returncode != 0
    assert cli.rows("SELECT id FROM users") == []


def test_keys_create_prints_the_raw_key_once_and_stores_only_its_peppered_hash_with_the_settings(alice: Cli) -> None:
    output = alice.ok(
        "keys", "create", "--email", "alice@example.com", "--name", "deploy",
        "--scopes", "a,b", "--rate-limit", "100/60", "--expires-in", "3600",
    )  # fmt: skip
    assert len(output.splitlines()) == 1
    raw = output.strip()
    assert KEY_PATTERN.fullmatch(raw), raw

    row = alice.key_row(raw)
    pepper = derive_pepper(alice.secret_file.read_text().strip())
    assert row["key_hash"] == hash_key(raw, pepper)
    assert row["hash_scheme"] == "hmac-sha256-v1"
    assert (row["name"], row["user_id"], row["is_active"]) == ("deploy", 1, 1)
    assert json.loads(row["scopes"]) == ["a", "b"]
    assert (row["rate_limit"], row["rate_limit_window_seconds"]) == (100, 60)
    assert (parse_time(row["expires_at"]) - parse_time(row["created_at"])).total_seconds() == 3600
    assert row["hint"] == f"{raw.rsplit('_', 1)[0]}_…{raw[-4:]}"
    dump = repr([tuple(row) for table in ("api_keys", "audit_events") for row in alice.rows(f"SELECT * FROM {table}")])
    assert raw not in dump
    assert raw.rsplit("_", 1)[1][:-4] not in dump
    assert [tuple(event) for event in alice.rows("SELECT action, api_key_id FROM audit_events WHERE api_key_id")] == [
        ("key.created", row["id"])
    ]


def test_keys_create_for_an_unknown_email_exits_1_and_issues_nothing(alice: Cli) -> None:
    result = alice.run("keys", "create", "--email", "nobody@example.com", "--name", "x")
    assert result.returncode == 1
    assert "no user with email nobody@example.com" in result.stderr
    assert result.stdout == ""
    assert alice.rows("SELECT id FROM api_keys") == []


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--rate-limit", "100"], id="rate-limit-without-window"),
        pytest.param(["--rate-limit", "1/0"], id="rate-limit-zero-window"),
        pytest.param(["--scopes", "Not A Scope"], id="bad-scope"),
        pytest.param(["--expires-in", "0"], id="expires-now"),
        pytest.param(["--name", "n" * 101], id="name-over-100"),
    ],
)
def test_keys_create_with_bad_settings_exits_2_with_a_message_and_issues_nothing(
    alice: Cli, options: list[str]
) -> None:
    args = ["keys", "create", "--email", "alice@example.com", "--name", "x", *options]
    result = alice.run(*args)
    assert result.returncode == 2
    assert "invalid key settings" in result.stderr
    assert "Traceback" not in result.stderr
    assert alice.rows("SELECT id FROM api_keys") == []


def test_keys_list_shows_id_hint_name_owner_and_state_but_never_the_key(alice: Cli) -> None:
    alice.ok("users", "create", "--email", "bob@example.com")
    first = alice.create_key()
    second = alice.create_key("bob@example.com")
    alice.ok("keys", "revoke", "1")

    output = alice.ok("keys", "list")
    assert first not in output
    assert second not in output
    assert output.splitlines() == [
        f"2\t{alice.key_row(second)['hint']}\tcli-key\towner=2\tactive\tlast_used=never",
        f"1\t{alice.key_row(first)['hint']}\tcli-key\towner=1\trevoked\tlast_used=never",
    ]
    assert alice.ok("keys", "list", "--email", "bob@example.com").splitlines() == output.splitlines()[:1]


def test_keys_list_unused_for_days_lists_only_keys_idle_that_long(alice: Cli) -> None:
    stale = alice.create_key()
    fresh = alice.create_key()
    used = alice.create_key()
    for raw in (stale, used):  # made 100 days ago, in the format the column stores
        row = alice.key_row(raw)
        created = datetime.fromisoformat(row["created_at"]) - timedelta(days=100)
        with closing(sqlite3.connect(alice.database)) as connection, connection:
            connection.execute(
                "UPDATE api_keys SET created_at = ? WHERE id = ?", (created.isoformat(sep=" "), row["id"])
            )
    alice.ok("keys", "verify", used)  # used now: not stale, however old

    listed = alice.ok("keys", "list", "--unused-for-days", "90").splitlines()

    assert [line.split("\t")[0] for line in listed] == [str(alice.key_row(stale)["id"])]
    assert str(alice.key_row(fresh)["id"]) not in [line.split("\t")[0] for line in listed]
    for bad in ("0", "-1", "3651", "x"):
        result = alice.run("keys", "list", "--unused-for-days", bad)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr


def test_keys_list_for_an_unknown_email_exits_1(alice: Cli) -> None:
    result = alice.run("keys", "list", "--email", "nobody@example.com")
    assert result.returncode == 1
    assert "no user with email" in result.stderr


def test_keys_verify_exits_0_for_a_valid_key_and_records_its_use(alice: Cli) -> None:
    raw = alice.create_key()
    result = alice.run("keys", "verify", raw)
    assert (result.returncode, result.stdout.strip()) == (0, "VALID")
    row = alice.key_row(raw)
    assert row["use_count"] == 1
    assert row["last_used_at"] is not None


def wrong_secret(raw: str) -> str:
    """Same key_id, another secret with a correct checksum: well-formed, so only the hash comparison rejects it."""
    body = raw[:-CHECKSUM_LENGTH]
    body = body[:-1] + ("0" if body[-1] != "0" else "1")
    return body + checksum(body)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda raw: "invalid-key-here", id="garbage"),
        pytest.param(wrong_checksum, id="wrong-checksum"),
        pytest.param(wrong_secret, id="wrong-secret"),
        pytest.param(lambda raw: generate_key("ks").raw, id="unknown-key-id"),
    ],
)
def test_keys_verify_exits_1_with_not_found_for_a_key_that_is_not_ours(alice: Cli, mangle: Any) -> None:
    raw = alice.create_key()
    result = alice.run("keys", "verify", mangle(raw))
    assert (result.returncode, result.stdout.strip()) == (1, "NOT_FOUND")
    assert alice.key_row(raw)["use_count"] == 0


def test_keys_revoke_deactivates_the_key_for_good_and_verify_then_exits_1(alice: Cli) -> None:
    raw = alice.create_key()
    key_pk = alice.key_row(raw)["id"]
    assert alice.ok("keys", "revoke", str(key_pk)).strip() == f"revoked key {key_pk}"
    row = alice.key_row(raw)
    assert row["is_active"] == 0
    assert row["revoked_at"] is not None

    result = alice.run("keys", "verify", raw)
    assert (result.returncode, result.stdout.strip()) == (1, "REVOKED")

    alice.ok("keys", "revoke", str(key_pk))  # idempotent: the first revocation stands
    assert alice.key_row(raw)["revoked_at"] == row["revoked_at"]
    assert len(alice.rows("SELECT id FROM audit_events WHERE action = 'key.revoked'")) == 1


def test_keys_revoke_of_an_unknown_id_exits_1(alice: Cli) -> None:
    result = alice.run("keys", "revoke", "99")
    assert result.returncode == 1
    assert "no key with id 99" in result.stderr


def test_keys_verify_of_a_key_with_a_quota_spends_exactly_one_unit(alice: Cli) -> None:
    raw = alice.create_key()
    with closing(sqlite3.connect(alice.database)) as connection, connection:
        connection.execute("UPDATE api_keys SET quota_remaining = 1000 WHERE key_id = ?", (raw.split("_")[-2],))

    result = alice.run("keys", "verify", raw)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "VALID"
    # The verification leases a block of the quota; the command returns what it did not spend when it stops.
    assert alice.key_row(raw)["quota_remaining"] == 999


def test_version_prints_the_version_and_exits_0(tmp_path: Path) -> None:
    assert Cli(tmp_path).ok("--version").strip() == f"keystile {__version__}"


# Problems the user can fix: told in a line or two (what is wrong, what to do), exit 1, no traceback.

CONNECTION_PASSWORD = "hunter2"


def assert_told_briefly(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert 1 <= len(result.stderr.strip().splitlines()) <= 3, result.stderr
    for expected in words:
        assert expected in result.stderr


def unreachable_redis_url() -> str:
    return f"redis://:{CONNECTION_PASSWORD}@127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["keys", "create", "--email", "alice@example.com", "--name", "x"], id="keys-create"),
        pytest.param(["keys", "list"], id="keys-list"),
        pytest.param(["keys", "verify", generate_key("ks").raw], id="keys-verify"),
        pytest.param(["keys", "revoke", "1"], id="keys-revoke"),
        pytest.param(["users", "create", "--email", "alice@example.com"], id="users-create"),
    ],
)
def test_a_command_in_a_fresh_directory_says_to_run_migrate_and_creates_no_file(
    tmp_path: Path, args: list[str]
) -> None:
    cli = Cli(tmp_path)
    result = cli.run(*args)
    assert_told_briefly(result, f"no keystile database at {cli.database}", "run `keystile migrate`")
    assert list(tmp_path.iterdir()) == []  # neither an empty keystile.db nor keystile.secret


def test_a_command_on_an_empty_database_file_says_to_run_migrate_and_works_once_it_has(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.database.touch()
    assert_told_briefly(cli.run("keys", "list"), "has no keystile schema", "run `keystile migrate`")
    cli.ok("migrate")
    assert cli.ok("keys", "list") == ""


def test_a_command_on_an_older_schema_says_to_run_migrate_and_works_once_it_has(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    migrations.upgrade(f"sqlite+aiosqlite:///{cli.database}", "0001")
    assert_told_briefly(cli.run("keys", "list"), "has an older keystile schema", "run `keystile migrate`")
    cli.ok("migrate")
    assert cli.ok("keys", "list") == ""


@pytest.mark.parametrize("args", [["keys", "list"], ["migrate"]], ids=["keys-list", "migrate"])
def test_a_schema_from_a_newer_keystile_is_refused_and_left_as_it_is(cli: Cli, args: list[str]) -> None:
    with closing(sqlite3.connect(cli.database)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    assert_told_briefly(cli.run(*args), "migrated by a newer keystile")
    assert [tuple(row) for row in cli.rows("SELECT version_num FROM alembic_version")] == [("9999_from_the_future",)]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["migrate"], id="migrate"),
        pytest.param(["serve", "--port", str(free_port())], id="serve"),
        pytest.param(["keys", "list"], id="keys-list"),
        pytest.param(["users", "create", "--email", "alice@example.com"], id="users-create"),
    ],
)
def test_an_unreachable_postgresql_is_told_with_host_and_port_but_never_the_password(
    tmp_path: Path, args: list[str]
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://postgres:{CONNECTION_PASSWORD}@127.0.0.1:{port}/keystile"
    env = {"KEYSTILE_DATABASE_URL": url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}
    result = Cli(tmp_path).run(*args, env=env)
    assert_told_briefly(result, f"cannot connect to the database at postgresql+asyncpg://postgres:***@127.0.0.1:{port}")
    assert "KEYSTILE_DATABASE_URL" in result.stderr
    assert CONNECTION_PASSWORD not in result.stdout + result.stderr


def test_with_log_level_debug_the_message_comes_with_its_traceback(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://postgres:{CONNECTION_PASSWORD}@127.0.0.1:{free_port()}/keystile"
    env = {"KEYSTILE_DATABASE_URL": url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY, "KEYSTILE_LOG_LEVEL": "debug"}
    result = Cli(tmp_path).run("migrate", env=env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "ConnectionRefusedError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("check that the database server is running")
    assert CONNECTION_PASSWORD not in result.stderr


def test_migrate_into_a_directory_that_does_not_exist_says_so_and_creates_nothing(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    result = cli.run("migrate", env={"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/missing/keystile.db"})
    assert_told_briefly(result, "cannot connect to the database", "the file's directory must exist")
    assert list(tmp_path.iterdir()) == []


def test_keys_revoke_with_redis_unreachable_revokes_and_warns_that_other_instances_follow_within_the_cache_ttl(
    alice: Cli,
) -> None:
    raw = alice.create_key()
    result = alice.run("keys", "revoke", "1", env={"KEYSTILE_REDIS_URL": unreachable_redis_url()})
    assert (result.returncode, result.stdout.strip()) == (0, "revoked key 1")
    assert result.stderr.startswith("warning: could not broadcast a key change")
    assert "cache TTL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert CONNECTION_PASSWORD not in result.stderr
    assert alice.key_row(raw)["is_active"] == 0


def test_keys_verify_with_redis_unreachable_fails_open_with_a_warning(alice: Cli) -> None:
    raw = alice.create_key("alice@example.com", "--rate-limit", "10/60")
    result = alice.run("keys", "verify", raw, env={"KEYSTILE_REDIS_URL": unreachable_redis_url()})
    assert (result.returncode, result.stdout.strip()) == (0, "VALID")
    assert "rate limiter backend unreachable, failing open" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_keys_verify_with_redis_unreachable_and_failure_mode_closed_decides_nothing_and_exits_1(alice: Cli) -> None:
    raw = alice.create_key("alice@example.com", "--rate-limit", "10/60")
    env = {"KEYSTILE_REDIS_URL": unreachable_redis_url(), "KEYSTILE_RATE_LIMIT_FAILURE": "closed"}
    result = alice.run("keys", "verify", raw, env=env)
    assert_told_briefly(result, "KEYSTILE_RATE_LIMIT_FAILURE=closed", "KEYSTILE_REDIS_URL")
    assert result.stdout == ""
    assert CONNECTION_PASSWORD not in result.stderr
    assert alice.key_row(raw)["use_count"] == 0


@pytest.mark.process
def test_serve_with_redis_unreachable_warns_once_and_serves(cli: Cli) -> None:
    env = {"KEYSTILE_DATABASE_URL": cli.env["KEYSTILE_DATABASE_URL"], "KEYSTILE_REDIS_URL": unreachable_redis_url()}
    with KeystileServer(env, cwd=cli.cwd) as server:
        assert server.is_healthy()
    assert "warning: Redis does not answer" in server.log
    assert "KEYSTILE_REDIS_URL" in server.log
    assert "Traceback" not in server.log
    assert CONNECTION_PASSWORD not in server.log
