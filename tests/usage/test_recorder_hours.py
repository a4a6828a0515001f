"""The recorder's hourly counts: one upsert per bucket per flush, nothing lost when a flush fails, exact while records
and flushes interleave, and counts of a deleted key or identity dropped instead of blocking every later flush."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from keystile.identities.models import Identity
from keystile.keys.models import ApiKey
from keystile.keys.records import Outcome
from keystile.usage.models import IdentityUsageHour, KeyUsageHour
from keystile.users.models import User
from tests.helpers import KeystileClient, create_key, stored_key, user_headers

pytestmark = pytest.mark.no_timer_flush

HOUR = timedelta(hours=1)
TEN = datetime(2030, 1, 1, 10, tzinfo=UTC)


async def key_ids(client: KeystileClient, count: int) -> list[int]:
    headers = await user_headers(client)
    return [(await create_key(client, headers, name=f"k{index}"))["id"] for index in range(count)]


async def identity_of(client: KeystileClient, owner_email: str = "alice@example.com") -> int:
    async with client.keystile.session_factory() as session:
        owner = await session.scalar(select(User.id).where(User.email == owner_email))
        assert owner is not None
        identity = Identity(user_id=owner, external_id="acme", identity_metadata={}, created_at=TEN)
        session.add(identity)
        await session.commit()
        return identity.id


async def key_hours(client: KeystileClient) -> dict[tuple[int, datetime], tuple[int, int, int, int]]:
    async with client.keystile.session_factory() as session:
        rows = await session.scalars(select(KeyUsageHour))
        return {
            (row.api_key_id, row.hour): (row.valid, row.rate_limited, row.quota_exceeded, row.rejected) for row in rows
        }


async def identity_hours(client: KeystileClient) -> dict[tuple[int, datetime], tuple[int, int, int, int]]:
    async with client.keystile.session_factory() as session:
        rows = await session.scalars(select(IdentityUsageHour))
        return {
            (row.identity_id, row.hour): (row.valid, row.rate_limited, row.quota_exceeded, row.rejected) for row in rows
        }


class DatabaseDown(OSError):
    pass


@contextlib.contextmanager
def refusing(engine: AsyncEngine, statement_start: str) -> Iterator[None]:
    """Inside, every statement starting with `statement_start` fails before it reaches the database."""

    def refuse(*args: Any) -> None:
        if args[2].lstrip().upper().startswith(statement_start):
            raise DatabaseDown("database went away")

    event.listen(engine.sync_engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", refuse)


@contextlib.contextmanager
def executions(engine: AsyncEngine) -> Iterator[list[tuple[str, int]]]:
    """Each statement sent while the block runs, with how many parameter sets it carried (an executemany, several)."""
    seen: list[tuple[str, int]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool) -> None:
        seen.append((statement.lstrip().upper(), len(parameters) if executemany else 1))

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


async def test_a_flush_writes_one_upsert_per_bucket_and_one_update_per_used_key(client: KeystileClient) -> None:
    first, second = await key_ids(client, 2)
    identity = await identity_of(client)
    usage = client.keystile.usage
    for at in (TEN, TEN + timedelta(minutes=59)):
        usage.record(first, at, Outcome.VALID, identity)
    usage.record(first, TEN + HOUR, Outcome.RATE_LIMITED, identity)
    usage.record(second, TEN, Outcome.EXPIRED)  # no valid use: its use_count is left alone

    with executions(client.keystile.engine) as statements:
        assert await usage.flush() == 2

    writes = [(statement.split()[0:3], sets) for statement, sets in statements if not statement.startswith("DELETE")]
    assert writes == [
        (["UPDATE", "API_KEYS", "SET"], 1),
        (["INSERT", "INTO", "KEY_USAGE_HOURS"], 3),  # first at 10:00 and 11:00, second at 10:00
        (["INSERT", "INTO", "IDENTITY_USAGE_HOURS"], 2),
    ]
    assert await key_hours(client) == {
        (first, TEN): (2, 0, 0, 0),
        (first, TEN + HOUR): (0, 1, 0, 0),
        (second, TEN): (0, 0, 0, 1),
    }
    assert await identity_hours(client) == {(identity, TEN): (2, 0, 0, 0), (identity, TEN + HOUR): (0, 1, 0, 0)}
    assert ((await stored_key(client, first)).use_count, (await stored_key(client, first)).last_used_at) == (
        2,
        TEN + timedelta(minutes=59),
    )
    assert (await stored_key(client, second)).use_count == 0


async def test_flushes_add_to_the_stored_hour(client: KeystileClient) -> None:
    [key] = await key_ids(client, 1)
    usage = client.keystile.usage
    for outcome in (Outcome.VALID, Outcome.QUOTA_EXCEEDED, Outcome.VALID):
        usage.record(key, TEN + timedelta(minutes=5), outcome)
        await usage.flush()

    assert await key_hours(client) == {(key, TEN): (2, 0, 1, 0)}


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param("UPDATE API_KEYS", id="use-count-update"),
        pytest.param("INSERT INTO KEY_USAGE_HOURS", id="key-hours-upsert"),
        pytest.param("INSERT INTO IDENTITY_USAGE_HOURS", id="identity-hours-upsert"),
    ],
)
async def test_a_failed_flush_keeps_every_count_for_the_next_flush(client: KeystileClient, refused: str) -> None:
    [key] = await key_ids(client, 1)
    identity = await identity_of(client)
    usage = client.keystile.usage
    usage.record(key, TEN, Outcome.VALID, identity)
    usage.record(key, TEN + HOUR, Outcome.INSUFFICIENT_SCOPES, identity)

    with refusing(client.keystile.engine, refused), pytest.raises(DatabaseDown):
        await usage.flush()
    assert (await key_hours(client), await identity_hours(client)) == ({}, {})  # one transaction: nothing half-written
    assert (await stored_key(client, key)).use_count == 0
    usage.record(key, TEN + HOUR, Outcome.VALID, identity)  # counted between the failed flush and the next

    assert await usage.flush() == 1

    assert await key_hours(client) == {(key, TEN): (1, 0, 0, 0), (key, TEN + HOUR): (1, 0, 0, 1)}
    assert await identity_hours(client) == {(identity, TEN): (1, 0, 0, 0), (identity, TEN + HOUR): (1, 0, 0, 1)}
    stored = await stored_key(client, key)
    assert (stored.use_count, stored.last_used_at) == (2, TEN + HOUR)
    assert len(usage) == 0


async def test_records_and_flushes_interleaved_lose_and_double_nothing(client: KeystileClient) -> None:
    keys = await key_ids(client, 3)
    identity = await identity_of(client)
    usage = client.keystile.usage
    outcomes = [Outcome.VALID, Outcome.VALID, Outcome.RATE_LIMITED, Outcome.QUOTA_EXCEEDED, Outcome.REVOKED]
    made = {key: [0, 0, 0, 0] for key in keys}  # what was recorded, per key, in the order of the stored counts
    column = {Outcome.VALID: 0, Outcome.RATE_LIMITED: 1, Outcome.QUOTA_EXCEEDED: 2, Outcome.REVOKED: 3}
    flushes = 0

    async def recorder(key: int) -> None:
        # Rounds go on until several flushes have run while records were being made (SQLite's take many turns).
        for index in itertools.count():
            if index >= 40 and flushes >= 3:
                return
            at = TEN + timedelta(minutes=index % 40 * 3)  # crosses into the next hour, and back for the late ones
            for outcome in outcomes:
                usage.record(key, at if index % 7 else at - HOUR / 2, outcome, identity)
                made[key][column[outcome]] += 1
                await asyncio.sleep(0)  # give the flusher its turn between any two records

    async def flusher() -> None:
        nonlocal flushes
        while not recorders.done():
            await usage.flush()
            flushes += 1

    recorders = asyncio.gather(*(recorder(key) for key in keys))
    await asyncio.gather(recorders, flusher())
    await usage.flush()

    def totals(hours: dict[tuple[int, datetime], tuple[int, int, int, int]]) -> dict[int, list[int]]:
        summed: dict[int, list[int]] = {}
        for (subject, _hour), counts in hours.items():
            summed[subject] = [a + b for a, b in zip(summed.get(subject, [0, 0, 0, 0]), counts, strict=True)]
        return summed

    assert flushes >= 3
    assert totals(await key_hours(client)) == made
    assert totals(await identity_hours(client)) == {
        identity: [sum(counts) for counts in zip(*made.values(), strict=True)]
    }
    assert [(await stored_key(client, key)).use_count for key in keys] == [made[key][0] for key in keys]


async def test_counts_of_a_deleted_key_or_identity_are_dropped_and_the_rest_written(client: KeystileClient) -> None:
    kept, deleted = await key_ids(client, 2)
    identity = await identity_of(client)
    usage = client.keystile.usage
    usage.record(kept, TEN)
    usage.record(deleted, TEN, Outcome.VALID, identity)
    async with client.keystile.session_factory() as session:
        await session.execute(delete(ApiKey).where(ApiKey.id == deleted))
        await session.execute(delete(Identity).where(Identity.id == identity))
        await session.commit()

    assert await usage.flush() == 2

    assert await key_hours(client) == {(kept, TEN): (1, 0, 0, 0)}
    assert await identity_hours(client) == {}
    assert len(usage) == 0
    usage.record(kept, TEN)
    assert await usage.flush() == 1


async def test_a_late_record_of_an_earlier_hour_counts_in_that_hour(client: KeystileClient) -> None:
    [key] = await key_ids(client, 1)
    usage = client.keystile.usage
    usage.record(key, TEN + HOUR + timedelta(seconds=1))
    usage.record(key, TEN + HOUR - timedelta(microseconds=1), Outcome.RATE_LIMITED)  # taken before 11:00, late
    usage.record(key, TEN + HOUR + timedelta(seconds=2))

    await usage.flush()

    assert await key_hours(client) == {(key, TEN): (0, 1, 0, 0), (key, TEN + HOUR): (2, 0, 0, 0)}


async def test_a_key_not_found_is_counted_nowhere(client: KeystileClient) -> None:
    [key] = await key_ids(client, 1)

    client.keystile.usage.record(key, TEN, Outcome.NOT_FOUND)

    assert len(client.keystile.usage) == 0
    assert client.keystile.usage.pending_for(key) is None
