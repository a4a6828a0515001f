"""Where the real PostgreSQL and Redis of the test suite live, and whether a missing one skips or fails.

Locally a missing service skips its tests; in CI (`CI=true`) it fails them, so a green CI always means both backends
were tested.
"""

from __future__ import annotations

import asyncio
import os

import pytest

POSTGRES_ADMIN_URL = os.environ.get("KEYSTILE_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_DATABASE = os.environ.get("KEYSTILE_TEST_POSTGRES_DATABASE", "keystile_test")
POSTGRES_URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{POSTGRES_DATABASE}"
REDIS_URL = os.environ.get("KEYSTILE_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(service: str, error: BaseException) -> None:
    message = f"{service} is not reachable: {error!r}"
    if IN_CI:
        pytest.fail(f"{message} (CI requires it)", pytrace=False)
    pytest.skip(message)


def postgres_url_for(name: str) -> str:
    """The async URL of database `name` on the test server."""
    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"


async def ensure_postgres_database(name: str = POSTGRES_DATABASE) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def reset_postgres_schema(url: str = POSTGRES_URL) -> None:
    import asyncpg

    connection = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await connection.close()


def fresh_postgres_database(name: str) -> str:
    """Create database `name` if needed and empty its schema; its async URL. For tests that run their own servers or
    migrations, so they never touch the database the in-process fixtures share. Skips (fails in CI) without
    PostgreSQL."""
    url = postgres_url_for(name)

    async def prepare() -> None:
        await ensure_postgres_database(name)
        await reset_postgres_schema(url)

    try:
        run(prepare())
    except Exception as error:
        unavailable("PostgreSQL", error)
    return url


async def truncate_postgres() -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_URL.replace("+asyncpg", ""), timeout=5)
    try:
        await connection.execute("TRUNCATE audit_events, api_keys, users RESTART IDENTITY CASCADE")
    finally:
        await connection.close()


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]
