"""Alembic migrations, one history for SQLite and PostgreSQL, run by `keystile migrate` and `keystile serve`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

SCRIPT_LOCATION = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`. Synchronous (it runs its own event loop): call it from a thread in async code."""
    command.upgrade(alembic_config(database_url), revision)
