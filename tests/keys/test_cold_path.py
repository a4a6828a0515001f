"""The cold path (docs/PERFORMANCE.md, "The cold path"): a cache miss is one Core SELECT on a kept connection, builds
the record from plain columns, survives the database dropping that connection, and entries live longer while the
invalidation subscription hears every change."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keystile.db import DatabaseIncidents, is_database_unavailable
from keystile.keys import format as key_format
from keystile.keys.cache import DEFAULT_TTL_SECONDS, SUBSCRIBED_TTL_SECONDS
from keystile.keys.loader import KeyLoader
from keystile.keys.records import KeyRecord
from keystile.net import parse_networks
from keystile.ratelimit.policy import RateLimitPolicy
from tests import backends
from tests.conftest import MakeClient
from tests.helpers import (
    FakeMonotonic,
    KeystileClient,
    create_key,
    make_admin,
    parse_time,
    recorded_statements,
    stored_key,
    user_headers,
)
from tests.keys.background import eventually
from tests.ratelimit.conftest import RedisServer

pytestmark = pytest.mark.no_timer_flush


@pytest.fixture
def monotonic() -> FakeMonotonic:
    """The apps' interval clock, so cache entries go stale when the test says."""
    return FakeMonotonic()


def key_id_of(created: dict[str, Any]) -> str:
    found = key_format.key_id_of(created["key"], "ks")
    assert found is not None
    return found


@contextlib.contextmanager
def pool_checkouts(engine: AsyncEngine) -> Iterator[list[object]]:
    """Every connection `engine`'s pool hands out while the block runs."""
    checkouts: list[object] = []

    def on_checkout(*args: Any) -> None:
        checkouts.append(args[0])

    event.listen(engine.sync_engine, "checkout", on_checkout)
    try:
        yield checkouts
    finally:
        event.remove(engine.sync_engine, "checkout", on_checkout)


async def cold_verify(client: KeystileClient, key: str) -> bool:
    client.keystile.key_cache.clear()
    return (await client.keystile.verifier.verify(key)).valid


async def test_a_miss_is_one_select_on_a_kept_connection(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client))
    assert await cold_verify(client, created["key"])  # the first miss checks a connection out, and keeps it

    with pool_checkouts(client.keystile.engine) as checkouts, recorded_statements(client.keystile) as sql:
        valid = [await cold_verify(client, created["key"]) for _ in range(5)]

    assert valid == [True] * 5
    assert checkouts == []
    assert len(sql) == 5
    assert all(statement.lstrip().startswith("SELECT") for statement in sql)


async def test_the_record_read_on_a_miss_holds_every_field_of_the_key(client: KeystileClient) -> None:
    headers = await user_headers(client, "owner@example.com")
    await make_admin(client, "owner@example.com")
    metadata = {"team": "search", "nested": {"list": [1, 2, {"deep": True}]}}
    full = await create_key(
        client,
        headers,
        name="full",
        scopes=["read", "write"],
        ip_allowlist=["10.0.0.0/8", "2001:db8::1"],
        metadata=metadata,
        rate_limit={"limit": 100, "window_seconds": 60},
        quota=1000,
        expires_in=3600,
    )
    bare = await create_key(client, headers, name="bare")
    client.keystile.key_cache.clear()

    record = await client.keystile.verifier.record(key_id_of(full))
    plain = await client.keystile.verifier.record(key_id_of(bare))

    row = await stored_key(client, full["id"])
    assert record == KeyRecord(
        id=full["id"],
        key_id=key_id_of(full),
        hash_scheme=key_format.HASH_SCHEME,
        key_digest=bytes.fromhex(row.key_hash),
        user_id=row.user_id,
        owner_is_admin=True,
        name="full",
        scopes=frozenset({"read", "write"}),
        ip_networks=parse_networks(["10.0.0.0/8", "2001:db8::1"]),
        metadata=MappingProxyType(metadata),
        expires_at=parse_time(full["expires_at"]),
        is_active=True,
        enabled=True,
        rate_limit=RateLimitPolicy(limit=100, window_seconds=60),
        quota_holder_id=full["id"],
        identity=None,
        rate_limit_bucket=f"key:{full['id']}",
    )
    assert plain is not None
    assert (plain.scopes, plain.ip_networks, dict(plain.metadata), plain.expires_at) == (frozenset(), (), {}, None)
    assert (plain.rate_limit, plain.quota_holder_id, plain.owner_is_admin) == (None, None, True)


@pytest.mark.postgres
async def test_a_kept_connection_the_database_dropped_is_replaced_without_failing_the_miss(
    client: KeystileClient, caplog: pytest.LogCaptureFixture
) -> None:
    if client.keystile.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL: its server can drop a client's connection")
    created = await create_key(client, await user_headers(client))
    assert await cold_verify(client, created["key"])  # a connection is now kept
    admin = await asyncpg.connect(backends.POSTGRES_URL.replace("+asyncpg", ""), timeout=5)
    try:
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    caplog.set_level(logging.INFO)
    with pool_checkouts(client.keystile.engine) as checkouts:
        valid = await cold_verify(client, created["key"])

    assert dropped >= 1
    assert valid
    assert len(checkouts) == 1  # the kept connection failed; the SELECT was retried on a fresh, pinged one
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_a_sqlite_error_on_a_miss_reads_as_sqlalchemy_s_so_an_unusable_database_is_an_outage(
    tmp_path: Path,
) -> None:
    """The miss's SELECT skips SQLAlchemy (keys/loader.py), yet its errors are SQLAlchemy's: an unusable database is
    then an outage (503, stale entries served, logged once) rather than a 500."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")  # no tables at all
    loader = KeyLoader(engine, DatabaseIncidents(engine))
    try:
        with pytest.raises(OperationalError) as refused:
            await loader("AAAAAAAAAAAA")
    finally:
        await loader.close()
        await engine.dispose()

    assert is_database_unavailable(refused.value)
    assert loader.driver_reads == 1  # it was the driver's own SELECT that failed


async def test_closing_the_loader_gives_its_kept_connections_back(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client))
    engine = client.keystile.engine
    before = engine.pool.checkedout()  # type: ignore[attr-defined]
    loader = KeyLoader(engine, client.keystile.database_incidents, keep=1)

    assert await loader(key_id_of(created)) is not None
    kept = engine.pool.checkedout()  # type: ignore[attr-defined]
    await loader.close()

    assert kept == before + 1
    assert engine.pool.checkedout() == before  # type: ignore[attr-defined]


# A longer lifetime while subscribed


async def selects_of_one_verification(client: KeystileClient, key: str) -> int:
    with recorded_statements(client.keystile) as statements:
        assert (await client.keystile.verifier.verify(key)).valid
    return len(statements)


async def test_entries_live_longer_while_subscribed_and_the_backstop_returns_once_the_subscription_is_lost(
    make_client: MakeClient, own_redis: RedisServer, monotonic: FakeMonotonic
) -> None:
    client = await make_client(redis_url=own_redis.url)
    invalidator = client.keystile.invalidator
    await eventually(invalidator.subscribed.is_set)
    key = (await create_key(client, await user_headers(client)))["key"]
    assert await selects_of_one_verification(client, key) == 1

    monotonic.now += SUBSCRIBED_TTL_SECONDS - 0.001
    fresh_while_subscribed = await selects_of_one_verification(client, key)
    monotonic.now += 0.001
    reloaded = await selects_of_one_verification(client, key)

    own_redis.stop()
    await eventually(lambda: not invalidator.subscribed.is_set())
    monotonic.now += DEFAULT_TTL_SECONDS - 0.001
    fresh_after_loss = await selects_of_one_verification(client, key)
    monotonic.now += 0.001
    reloaded_after_loss = await selects_of_one_verification(client, key)

    assert (fresh_while_subscribed, reloaded) == (0, 1)
    assert (fresh_after_loss, reloaded_after_loss) == (0, 1)  # capped at the backstop from the moment of the loss
