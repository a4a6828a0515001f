"""Fixtures: every app-level test runs once on SQLite and once on PostgreSQL, each with a clean database.

- `database_url`: parametrized `sqlite` / `postgres`. SQLite gets a fresh file copied from a migrated template;
  PostgreSQL is migrated once per session and truncated before each test.
- `clock`: a FakeClock, injected into the app, so expiry and windows move without sleeping; `monotonic` likewise
  for intervals.
- `make_client(**settings)`: an in-process app (lifespan run) behind `httpx.AsyncClient`; `client` is the default one.
- `redis_url`: Redis database 9, flushed before each test.
- `usage_flush_seconds`: the usage flush timer's interval; `@pytest.mark.no_timer_flush` keeps the timer out.
- Passwords are hashed with real Argon2id at its lowest cost (`CHEAP_PASSWORDS`): the suite registers hundreds of
  users. Processes started by tests keep the production parameters.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from keystile import migrations
from keystile.app import create_app
from keystile.clock import FakeClock
from keystile.instance import USAGE_FLUSH_SECONDS
from keystile.settings import Settings
from tests import backends
from tests.helpers import CHEAP_PASSWORDS, KeystileClient

TEST_SECRET_KEY = "test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"

MakeClient = Callable[..., Awaitable[KeystileClient]]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrations.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_schema() -> str:
    try:
        backends.run(backends.ensure_postgres_database())
        backends.run(backends.reset_postgres_schema())
    except (OSError, Exception) as error:
        backends.unavailable("PostgreSQL", error)
    migrations.upgrade(backends.POSTGRES_URL)
    return backends.POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "keystile.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_schema")
        backends.run(backends.truncate_postgres())
        yield url


@pytest.fixture
def clock() -> FakeClock:
    now = datetime.now(UTC).replace(microsecond=0)
    return FakeClock(now)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "secret_key": TEST_SECRET_KEY}
    return Settings(**(values | overrides))


@pytest.fixture
async def make_client(
    database_url: str, clock: FakeClock, monotonic: Callable[[], float], usage_flush_seconds: float
) -> AsyncIterator[MakeClient]:
    async with AsyncExitStack() as stack:

        async def make(**overrides: Any) -> KeystileClient:
            app = create_app(
                make_settings(database_url, **overrides),
                clock=clock,
                passwords=CHEAP_PASSWORDS,
                usage_flush_seconds=usage_flush_seconds,
                monotonic=monotonic,
            )
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = KeystileClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
            client.keystile = app.state.keystile
            return await stack.enter_async_context(client)

        yield make


@pytest.fixture
def monotonic() -> Callable[[], float]:
    """The apps' interval clock (cache TTL, limiter retries, quota re-reads): the real one, unless a test overrides
    this fixture with a `FakeMonotonic`."""
    return time.monotonic


@pytest.fixture
def usage_flush_seconds(request: pytest.FixtureRequest) -> float:
    """How often the apps of `make_client` write buffered usage. Tests marked `no_timer_flush` (statement counts,
    buffered usage) get an hour: usage is written when the test says so, or at shutdown, never by the timer."""
    return 3600.0 if request.node.get_closest_marker("no_timer_flush") else USAGE_FLUSH_SECONDS


@pytest.fixture
async def client(make_client: MakeClient) -> KeystileClient:
    return await make_client()


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    connection = redis.Redis.from_url(backends.REDIS_URL, socket_connect_timeout=2)
    try:
        connection.flushdb()
    except redis.RedisError as error:
        backends.unavailable("Redis", error)
    yield backends.REDIS_URL
    connection.flushdb()
    connection.close()
