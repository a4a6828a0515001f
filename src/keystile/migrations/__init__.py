"""Alembic migrations, one history for SQLite and PostgreSQL, run by `keystile migrate` and `keystile serve`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

SCRIPT_LOCATION = Path(__file__).parent


class SchemaState(Enum):
    """Where a database's schema stands against this keystile's migrations."""

    MISSING = "missing"  # never migrated: no alembic_version, so no keystile tables either
    BEHIND = "behind"  # migrated by an older keystile: `keystile migrate` brings it up to date
    CURRENT = "current"
    UNKNOWN = "unknown"  # at a revision this keystile does not have: migrated by a newer keystile


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`. Synchronous (it runs its own event loop): call it from a thread in async code."""
    command.upgrade(alembic_config(database_url), revision)


def schema_state(connection: Connection) -> SchemaState:
    """The schema's state in `connection`'s database; synchronous, for `AsyncConnection.run_sync`. Reads only."""
    current = set(MigrationContext.configure(connection).get_current_heads())
    if not current:
        return SchemaState.MISSING
    scripts = ScriptDirectory.from_config(alembic_config(""))
    if current == set(scripts.get_heads()):
        return SchemaState.CURRENT
    known = {script.revision for script in scripts.walk_revisions()}
    return SchemaState.BEHIND if current <= known else SchemaState.UNKNOWN
