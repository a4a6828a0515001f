"""Fixtures: every app-level test runs once on SQLite and once on PostgreSQL, each with a clean database.

- `database_url`: parametrized `sqlite` / `postgres`. SQLite gets a fresh file copied from a migrated template;
  PostgreSQL is migrated once per session and truncated before each test.
- `clock`: a FakeClock, injected into the app, so expiry and windows move without sleeping.
- `make_client(**settings)`: an in-process app (lifespan run) behind `httpx.AsyncClient`; `client` is the default one.
- `redis_url`: Redis database 9, flushed before each test.
- `no_timer_flush`: recorded usage is written when the test says so (or at shutdown), never by the timer.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from keystile import migrations
from keystile import runtime as runtime_module
from keystile.app import create_app
from keystile.clock import FakeClock
from keystile.settings import Settings
from tests import backends
from tests.helpers import KeystileClient

TEST_SECRET_KEY = "test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"

MakeClient = Callable[..., Awaitable[KeystileClient]]


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    """Real Argon2id, at its lowest cost: the suite registers hundreds of users, and the production parameters would
    spend minutes of CI on password hashing alone. Processes started by tests keep the production parameters."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    from keystile.users import passwords

    original = passwords._hasher
    cheap = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    passwords._hasher = lambda: cheap  # type: ignore[assignment]
    passwords._dummy_hash.cache_clear()
    yield
    passwords._hasher = original
    passwords._dummy_hash.cache_clear()


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
async def make_client(database_url: str, clock: FakeClock) -> AsyncIterator[MakeClient]:
    async with AsyncExitStack() as stack:

        async def make(**overrides: Any) -> KeystileClient:
            app = create_app(make_settings(database_url, **overrides), clock=clock)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = KeystileClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
            client.runtime = app.state.keystile
            return await stack.enter_async_context(client)

        yield make


@pytest.fixture
def no_timer_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Statement counts and buffered usage must not depend on when the usage flush timer fires; shutdown still
    flushes. Request it before `client` (e.g. `pytestmark = pytest.mark.usefixtures("no_timer_flush")`)."""
    monkeypatch.setattr(runtime_module, "USAGE_FLUSH_INTERVAL_SECONDS", 3600.0)


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
