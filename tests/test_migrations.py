"""The Alembic history builds exactly the models' schema, on SQLite and PostgreSQL, and unwinds cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from keystile import migrations
from keystile.audit import models as _audit_models  # noqa: F401  (registers its tables on Base.metadata)
from keystile.db import Base, create_engine
from keystile.events import models as _event_models  # noqa: F401
from keystile.keys import models as _key_models  # noqa: F401
from keystile.ui import models as _ui_models  # noqa: F401
from keystile.usage import models as _usage_models  # noqa: F401
from keystile.users import models as _user_models  # noqa: F401
from tests import backends

MODEL_TABLES = {
    "users",
    "api_keys",
    "audit_events",
    "identities",
    "key_usage_hours",
    "identity_usage_hours",
    "webhook_endpoints",
    "outbox_events",
    "webhook_deliveries",
    "webhook_attempts",
    "ui_sessions",
}


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"


def postgres_url(tmp_path: Path) -> str:
    return backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_migrations")


@pytest.fixture(
    params=[
        pytest.param(sqlite_url, id="sqlite"),
        pytest.param(postgres_url, id="postgres", marks=pytest.mark.postgres),
    ]
)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    make_url: Callable[[Path], str] = request.param
    return make_url(tmp_path)


def inspect_database(database_url: str, look: Callable[[Connection], Any]) -> Any:
    async def run() -> Any:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(look)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def schema_diff(database_url: str) -> list[Any]:
    """What `alembic revision --autogenerate` would write: the models minus the migrated schema."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, Base.metadata))

    return list(inspect_database(database_url, compare))


def tables(database_url: str) -> set[str]:
    return set(inspect_database(database_url, lambda connection: inspect(connection).get_table_names()))


def current_revision(database_url: str) -> str | None:
    return inspect_database(
        database_url, lambda connection: MigrationContext.configure(connection).get_current_revision()
    )


def head_revision() -> str:
    head = ScriptDirectory.from_config(migrations.alembic_config("unused")).get_current_head()
    assert head is not None
    return head


def test_the_migration_history_has_exactly_one_head() -> None:
    heads = ScriptDirectory.from_config(migrations.alembic_config("unused")).get_heads()
    assert len(heads) == 1


def test_upgrade_to_head_builds_a_schema_that_autogenerate_finds_nothing_to_add_to(empty_database: str) -> None:
    migrations.upgrade(empty_database)
    assert tables(empty_database) >= MODEL_TABLES
    assert current_revision(empty_database) == head_revision()
    assert schema_diff(empty_database) == []


def test_downgrade_to_base_removes_every_table_and_upgrading_again_rebuilds_the_same_schema(
    empty_database: str,
) -> None:
    migrations.upgrade(empty_database)
    command.downgrade(migrations.alembic_config(empty_database), "base")
    assert tables(empty_database) & MODEL_TABLES == set()
    assert current_revision(empty_database) is None

    migrations.upgrade(empty_database)
    assert current_revision(empty_database) == head_revision()
    assert schema_diff(empty_database) == []


def test_every_revision_downgrades_and_upgrades_one_step_at_a_time(empty_database: str) -> None:
    config = migrations.alembic_config(empty_database)
    revisions = [script.revision for script in ScriptDirectory.from_config(config).walk_revisions("base", "heads")]
    for revision in reversed(revisions):
        migrations.upgrade(empty_database, revision)
        assert current_revision(empty_database) == revision
    for revision in revisions[1:]:
        command.downgrade(config, "-1")
        assert current_revision(empty_database) == revision
    command.downgrade(config, "-1")
    assert current_revision(empty_database) is None


def run_sql(database_url: str, *statements: str) -> list[Any]:
    """Each statement in one transaction; the rows of the last."""

    async def run() -> list[Any]:
        engine = create_engine(database_url)
        try:
            async with engine.begin() as connection:
                result = None
                for statement in statements:
                    result = await connection.execute(text(statement))
                return list(result.mappings()) if result is not None and result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_metering_keeps_a_keys_quota_and_usage_from_before_the_upgrade(empty_database: str) -> None:
    migrations.upgrade(empty_database, "0003")
    run_sql(
        empty_database,
        "INSERT INTO users (id, email, password_hash, is_admin, created_at)"
        " VALUES (1, 'a@example.com', 'x', false, '2026-11-01 00:00:00+00:00')",
        "INSERT INTO api_keys (id, key_id, key_hash, hash_scheme, hint, name, user_id, is_active, created_at,"
        " last_used_at, use_count, scopes, ip_allowlist, metadata, rate_limit, rate_limit_window_seconds,"
        " quota_remaining)"
        " VALUES (1, 'AAAAAAAAAAAA', 'ab', 'hmac-sha256-v1', 'ks_AAAAAAAAAAAA_…abcd', 'old', 1, true,"
        " '2026-11-01 00:00:00+00:00', '2026-11-20 00:00:00+00:00', 5, '[]', '[]', '{}', 10, 60, 7)",
    )

    migrations.upgrade(empty_database)

    (row,) = run_sql(
        empty_database,
        "SELECT quota_remaining, use_count, rate_limit, rate_limit_window_seconds, enabled, identity_id,"
        " quota_refill_amount, quota_refill_interval, quota_refilled_at FROM api_keys WHERE id = 1",
    )
    assert dict(row) == {
        "quota_remaining": 7,
        "use_count": 5,
        "rate_limit": 10,
        "rate_limit_window_seconds": 60,
        "enabled": True,
        "identity_id": None,
        "quota_refill_amount": None,
        "quota_refill_interval": None,
        "quota_refilled_at": None,
    }
    assert run_sql(empty_database, "SELECT count(*) AS n FROM key_usage_hours")[0]["n"] == 0
    assert schema_diff(empty_database) == []
