"""keystile.db: the SQLite database file is private to its user, like the secret beside it."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from sqlalchemy import text

from keystile import migrations
from keystile.db import create_engine


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def run_on(path: Path, statement: str) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
            await connection.commit()
    finally:
        await engine.dispose()


def test_a_new_sqlite_database_file_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keystile.db"
    create_engine(f"sqlite+aiosqlite:///{path}")
    assert not path.exists()  # nothing is created before the first connection

    asyncio.run(run_on(path, "CREATE TABLE t (x INTEGER)"))

    assert mode_of(path) == 0o600
    for companion in tmp_path.glob("keystile.db-*"):  # WAL files, when still present
        assert mode_of(companion) == 0o600, companion


def test_migrate_creates_a_private_database_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"

    migrations.upgrade(f"sqlite+aiosqlite:///{path}")

    assert mode_of(path) == 0o600


def test_an_existing_database_file_keeps_the_mode_its_operator_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    migrations.upgrade(f"sqlite+aiosqlite:///{path}")
    path.chmod(0o640)

    asyncio.run(run_on(path, "SELECT 1"))

    assert mode_of(path) == 0o640
