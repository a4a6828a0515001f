"""The verification cache: bounded, short-lived, never defeated by a revoke, and cheap under a flood of bad keys."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import exc as sa_exc

from keystile.keys import format as key_format
from keystile.keys.cache import KeyCache
from keystile.keys.records import KeyRecord
from tests.helpers import (
    FakeMonotonic,
    KeystileClient,
    create_key,
    recorded_statements,
    user_headers,
    wrong_checksum,
)

pytestmark = pytest.mark.no_timer_flush

TTL = 10.0


def record_for(key_id: str, pk: int = 1) -> KeyRecord:
    return KeyRecord(
        id=pk,
        key_id=key_id,
        hash_scheme=key_format.HASH_SCHEME,
        key_digest=bytes(32),
        user_id=1,
        owner_is_admin=False,
        name="k",
        scopes=frozenset(),
        ip_networks=(),
        metadata=MappingProxyType({}),
        expires_at=None,
        is_active=True,
        enabled=True,
        rate_limit=None,
        quota_holder_id=None,
        identity=None,
        rate_limit_bucket=f"key:{pk}",
    )


def unknown_key() -> str:
    return key_format.generate_key("ks").raw


# Unit: KeyCache


def test_entry_is_served_until_its_ttl_and_gone_at_the_ttl() -> None:
    monotonic = FakeMonotonic()
    cache = KeyCache(ttl_seconds=TTL, monotonic=monotonic)
    record = record_for("AAAAAAAAAAAA")
    cache.put("AAAAAAAAAAAA", record)

    monotonic.now += TTL - 0.001
    assert cache.get("AAAAAAAAAAAA") is record
    monotonic.now += 0.001
    assert cache.get("AAAAAAAAAAAA") is None
    assert len(cache) == 0


def test_unknown_key_id_is_remembered_until_its_ttl() -> None:
    monotonic = FakeMonotonic()
    cache = KeyCache(ttl_seconds=TTL, monotonic=monotonic)
    cache.put("BBBBBBBBBBBB", None)

    assert cache.is_known_unknown("BBBBBBBBBBBB")
    assert cache.get("BBBBBBBBBBBB") is None
    assert len(cache) == 0
    monotonic.now += TTL
    assert not cache.is_known_unknown("BBBBBBBBBBBB")


def test_least_recently_used_entry_is_evicted_at_the_bound() -> None:
    cache = KeyCache(max_keys=2, monotonic=FakeMonotonic())
    cache.put("a", record_for("a", 1))
    cache.put("b", record_for("b", 2))
    assert cache.get("a") is not None  # "a" is now the most recently used

    cache.put("c", record_for("c", 3))

    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None


def test_flood_of_unknown_key_ids_does_not_evict_known_entries() -> None:
    cache = KeyCache(max_keys=2, max_unknown=3, monotonic=FakeMonotonic())
    cache.put("a", record_for("a", 1))
    cache.put("b", record_for("b", 2))

    for index in range(1000):
        cache.put(f"unknown{index:05d}", None)

    assert cache.get("a") is not None
    assert cache.get("b") is not None
    assert cache.is_known_unknown("unknown00999")
    assert not cache.is_known_unknown("unknown00000")  # the unknown table is bounded too


def test_invalidate_drops_a_known_and_an_unknown_entry() -> None:
    cache = KeyCache(monotonic=FakeMonotonic())
    cache.put("a", record_for("a"))
    cache.put("u", None)

    cache.invalidate("a")
    cache.invalidate("u")

    assert cache.get("a") is None
    assert not cache.is_known_unknown("u")


def test_a_longer_ttl_applies_to_entries_put_from_then_on() -> None:
    monotonic = FakeMonotonic()
    cache = KeyCache(ttl_seconds=TTL, monotonic=monotonic)
    cache.put("before", record_for("before", 1))
    cache.set_ttl(6 * TTL)
    cache.put("after", record_for("after", 2))

    monotonic.now += TTL
    assert cache.get("before") is None
    assert cache.get("after") is not None
    monotonic.now += 5 * TTL - 0.001
    assert cache.get("after") is not None
    monotonic.now += 0.001
    assert cache.get("after") is None


def test_a_shorter_ttl_applies_to_what_is_cached_too_from_now() -> None:
    monotonic = FakeMonotonic()
    cache = KeyCache(ttl_seconds=6 * TTL, monotonic=monotonic)
    cache.put("old", record_for("old", 1))
    cache.put("u", None)
    monotonic.now += 5 * TTL  # one TTL of its long lifetime left
    cache.put("young", record_for("young", 2))
    monotonic.now += 0.5 * TTL

    cache.set_ttl(TTL)  # e.g. the invalidation subscription was lost

    assert cache.get("old") is not None  # its refresh time (half a TTL from now) was already sooner: kept
    monotonic.now += 0.5 * TTL
    assert cache.get("old") is None
    assert cache.get("young") is not None
    assert cache.is_known_unknown("u") is False  # the unknown table follows the same lifetime
    monotonic.now += 0.5 * TTL
    assert cache.get("young") is None  # capped at one TTL from the change, not 6 TTLs from its put


class GatedLoader:
    """A loader that answers only when the test opens the gate, and counts how often it was asked."""

    def __init__(self, answer: KeyRecord | None) -> None:
        self.answer = answer
        self.calls = 0
        self.gate = asyncio.Event()

    async def __call__(self, key_id: str) -> KeyRecord | None:
        self.calls += 1
        await self.gate.wait()
        return self.answer


async def test_concurrent_misses_on_one_key_id_share_one_load_and_cache_it() -> None:
    cache = KeyCache(monotonic=FakeMonotonic())
    load = GatedLoader(record_for("a"))

    waiting = [asyncio.ensure_future(cache.get_or_load("a", load)) for _ in range(20)]
    await asyncio.sleep(0)  # every waiter has missed and joined the one load
    load.gate.set()
    records = await asyncio.gather(*waiting)

    assert load.calls == 1
    assert all(record is load.answer for record in records)
    assert cache.get("a") is load.answer


async def test_a_change_during_a_load_keeps_its_answer_out_of_the_cache() -> None:
    cache = KeyCache(monotonic=FakeMonotonic())
    stale = GatedLoader(record_for("a"))
    waiting = asyncio.ensure_future(cache.get_or_load("a", stale))
    await asyncio.sleep(0)

    cache.invalidate("a")  # e.g. a revoke committed while the query was running
    stale.gate.set()
    await waiting

    assert cache.get("a") is None
    fresh = GatedLoader(None)
    fresh.gate.set()
    assert await cache.get_or_load("a", fresh) is None
    assert fresh.calls == 1  # the next request queried again instead of trusting the stale answer


async def test_a_cancelled_waiter_does_not_cancel_the_load_others_wait_for() -> None:
    cache = KeyCache(monotonic=FakeMonotonic())
    load = GatedLoader(record_for("a"))
    leaving = asyncio.ensure_future(cache.get_or_load("a", load))
    staying = asyncio.ensure_future(cache.get_or_load("a", load))
    await asyncio.sleep(0)

    leaving.cancel()
    load.gate.set()

    assert await staying is load.answer
    assert leaving.cancelled()
    assert cache.get("a") is load.answer


async def test_a_failed_load_reaches_every_waiter_and_caches_nothing() -> None:
    cache = KeyCache(monotonic=FakeMonotonic())

    async def failing(key_id: str) -> KeyRecord | None:
        await asyncio.sleep(0)
        raise OSError("database unreachable")

    outcomes = await asyncio.gather(*(cache.get_or_load("a", failing) for _ in range(3)), return_exceptions=True)

    assert all(isinstance(outcome, OSError) for outcome in outcomes)
    assert cache.get("a") is None
    assert not cache.is_known_unknown("a")


# Unit: stale if error


STALE_IF_ERROR = 300.0


class DatabaseDown(OSError):
    pass


class FailingLoader:
    """A loader whose database is down (or fails with `error`), counting how often it was asked."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error if error is not None else DatabaseDown("connection refused")
        self.calls = 0

    async def __call__(self, key_id: str) -> KeyRecord | None:
        self.calls += 1
        await asyncio.sleep(0)
        raise self.error


def stale_cache(monotonic: FakeMonotonic) -> KeyCache:
    return KeyCache(ttl_seconds=TTL, stale_if_error_seconds=STALE_IF_ERROR, monotonic=monotonic)


async def test_a_stale_entry_is_served_while_its_reload_fails_for_want_of_the_database() -> None:
    monotonic = FakeMonotonic()
    cache = stale_cache(monotonic)
    record = record_for("a")
    cache.put("a", record)
    monotonic.now += TTL + 1
    load = FailingLoader()

    assert cache.get("a") is None  # stale: the hot path does not serve it
    answers = await asyncio.gather(*(cache.get_or_load("a", load) for _ in range(5)))

    assert answers == [record] * 5
    assert load.calls == 1  # still single-flight: the waiters shared the one failed reload


async def test_a_stale_entry_is_served_up_to_stale_if_error_seconds_past_its_refresh_time_and_not_after() -> None:
    monotonic = FakeMonotonic()
    cache = stale_cache(monotonic)
    record = record_for("a")
    cache.put("a", record)
    load = FailingLoader()

    monotonic.now += TTL + STALE_IF_ERROR - 0.001
    assert await cache.get_or_load("a", load) is record
    monotonic.now += 0.001
    with pytest.raises(DatabaseDown):
        await cache.get_or_load("a", load)

    assert len(cache) == 0  # dropped: too old to serve even in an outage
    assert load.calls == 2


async def test_a_reload_that_succeeds_replaces_the_stale_entry_with_a_fresh_one() -> None:
    monotonic = FakeMonotonic()
    cache = stale_cache(monotonic)
    cache.put("a", record_for("a", pk=1))
    monotonic.now += TTL + 1
    await cache.get_or_load("a", FailingLoader())  # served stale while the database was down
    reloaded = GatedLoader(record_for("a", pk=2))
    reloaded.gate.set()

    assert await cache.get_or_load("a", reloaded) is reloaded.answer
    assert cache.get("a") is reloaded.answer
    monotonic.now += TTL - 0.001
    assert cache.get("a") is reloaded.answer  # fresh for a whole TTL from the reload


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ValueError("a bug"), id="bug"),
        pytest.param(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")), id="integrity"),
        pytest.param(sa_exc.ProgrammingError("SELECT", {}, Exception("no such column")), id="programming"),
        pytest.param(asyncpg.UniqueViolationError("duplicate key value"), id="driver-error-with-sqlstate"),
    ],
)
async def test_an_error_that_is_not_about_the_database_being_unreachable_is_never_answered_stale(
    error: Exception,
) -> None:
    monotonic = FakeMonotonic()
    cache = stale_cache(monotonic)
    cache.put("a", record_for("a"))
    monotonic.now += TTL + 1

    with pytest.raises(type(error)):
        await cache.get_or_load("a", FailingLoader(error))


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ConnectionRefusedError(111, "Connect call failed"), id="connection-refused"),
        pytest.param(TimeoutError(), id="timeout"),
        pytest.param(sa_exc.OperationalError("SELECT", {}, Exception("unable to open database file")), id="sqlite"),
        pytest.param(
            sa_exc.DBAPIError("SELECT", {}, Exception("terminating connection"), connection_invalidated=True),
            id="connection-cut-mid-query",
        ),
        pytest.param(asyncpg.CannotConnectNowError("the database system is starting up"), id="starting-up"),
    ],
)
async def test_each_way_an_unreachable_database_fails_is_answered_stale(error: Exception) -> None:
    monotonic = FakeMonotonic()
    cache = stale_cache(monotonic)
    record = record_for("a")
    cache.put("a", record)
    monotonic.now += TTL + 1

    assert await cache.get_or_load("a", FailingLoader(error)) is record


async def test_a_remembered_unknown_key_id_stays_unknown_while_the_database_is_down() -> None:
    monotonic = FakeMonotonic()
    cache = stale_cache(monotonic)
    cache.put("u", None)
    monotonic.now += TTL + 1

    assert await cache.get_or_load("u", FailingLoader()) is None


async def test_a_key_id_never_seen_gets_the_database_error() -> None:
    cache = stale_cache(FakeMonotonic())

    with pytest.raises(DatabaseDown):
        await cache.get_or_load("never-seen", FailingLoader())


async def test_an_invalidated_entry_is_not_served_stale() -> None:
    monotonic = FakeMonotonic()
    cache = stale_cache(monotonic)
    cache.put("a", record_for("a"))
    monotonic.now += TTL + 1

    cache.invalidate("a")  # e.g. a revoke broadcast by an instance that still reaches the database

    with pytest.raises(DatabaseDown):
        await cache.get_or_load("a", FailingLoader())


async def test_without_stale_if_error_a_failed_reload_of_an_expired_entry_propagates() -> None:
    monotonic = FakeMonotonic()
    cache = KeyCache(ttl_seconds=TTL, monotonic=monotonic)
    cache.put("a", record_for("a"))
    monotonic.now += TTL

    with pytest.raises(DatabaseDown):
        await cache.get_or_load("a", FailingLoader())


async def test_an_entry_capped_by_a_shorter_ttl_is_still_served_stale_while_the_database_is_down() -> None:
    monotonic = FakeMonotonic()
    cache = KeyCache(ttl_seconds=6 * TTL, stale_if_error_seconds=STALE_IF_ERROR, monotonic=monotonic)
    record = record_for("a")
    cache.put("a", record)
    cache.set_ttl(TTL)
    monotonic.now += TTL + STALE_IF_ERROR - 0.001

    assert cache.get("a") is None
    assert await cache.get_or_load("a", FailingLoader()) is record


# Through the app


async def issue_key(client: KeystileClient, **body: Any) -> dict[str, Any]:
    headers = await user_headers(client)
    created = await create_key(client, headers, **body)
    created["headers"] = headers
    return created


async def test_second_use_of_a_key_sends_no_sql(client: KeystileClient) -> None:
    created = await issue_key(client)
    key = {"X-API-Key": created["key"]}
    with recorded_statements(client.keystile) as first:
        assert (await client.get("/data/export", headers=key)).status_code == 200
    assert first, "the first use must load the key from the database"

    with recorded_statements(client.keystile) as second:
        for _ in range(5):
            assert (await client.get("/data/export", headers=key)).status_code == 200

    assert second == []


async def test_concurrent_first_uses_of_a_key_send_one_select(client: KeystileClient) -> None:
    created = await issue_key(client)
    key = {"X-API-Key": created["key"]}
    client.keystile.key_cache.clear()

    with recorded_statements(client.keystile) as statements:
        responses = await asyncio.gather(*(client.get("/data/export", headers=key) for _ in range(10)))

    assert [response.status_code for response in responses] == [200] * 10
    assert len([sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]) == 1


@pytest.mark.parametrize(
    ("change", "refused_with"),
    [
        pytest.param(lambda pk: ("POST", f"/keys/{pk}/revoke", None), 401, id="revoke"),
        pytest.param(lambda pk: ("PATCH", f"/keys/{pk}", {"ip_allowlist": ["10.0.0.0/8"]}), 403, id="patch"),
        pytest.param(lambda pk: ("POST", f"/keys/{pk}/rotate", {"grace_seconds": 0}), 401, id="rotate"),
    ],
)
async def test_change_to_a_cached_key_applies_on_the_very_next_request(
    client: KeystileClient, change: Any, refused_with: int
) -> None:
    created = await issue_key(client)
    key = {"X-API-Key": created["key"]}
    assert (await client.get("/data/export", headers=key)).status_code == 200
    key_id = key_format.key_id_of(created["key"], "ks")
    assert key_id is not None
    assert client.keystile.key_cache.get(key_id) is not None

    method, path, body = change(created["id"])
    response = await client.request(method, path, json=body, headers=created["headers"])
    assert response.status_code in (200, 201), response.text

    refused = await client.get("/data/export", headers=key)
    assert refused.status_code == refused_with, refused.text


async def test_revoked_key_is_refused_on_the_next_request_and_stays_refused(client: KeystileClient) -> None:
    created = await issue_key(client)
    key = {"X-API-Key": created["key"]}
    assert (await client.get("/data/export", headers=key)).status_code == 200

    revoked = await client.post(f"/keys/{created['id']}/revoke", headers=created["headers"])
    assert revoked.status_code == 200

    for _ in range(3):
        response = await client.get("/data/export", headers=key)
        assert response.status_code == 401
        assert response.json() == {"detail": "Invalid or expired API key"}


@pytest.mark.parametrize(
    "make_malformed",
    [
        pytest.param(lambda key: wrong_checksum(key), id="wrong-checksum"),
        pytest.param(lambda key: "xx" + key[2:], id="wrong-prefix"),
        pytest.param(lambda key: key[:-1], id="truncated"),
        pytest.param(lambda key: key + "A" * 600, id="too-long"),
        pytest.param(lambda key: "ks_" + "A" * 12 + "_" + "B" * 49, id="shape-only"),
        pytest.param(lambda key: "garbage", id="garbage"),
    ],
)
async def test_malformed_key_is_refused_without_touching_the_database(
    client: KeystileClient, make_malformed: Any
) -> None:
    created = await issue_key(client)
    malformed = make_malformed(created["key"])

    with recorded_statements(client.keystile) as statements:
        response = await client.get("/data/export", headers={"X-API-Key": malformed})

    assert response.status_code == 401
    assert statements == []
    assert len(client.keystile.key_cache) == 0


async def test_unknown_key_id_is_looked_up_once_then_answered_from_the_cache(client: KeystileClient) -> None:
    unknown = {"X-API-Key": unknown_key()}
    with recorded_statements(client.keystile) as first:
        assert (await client.get("/data/export", headers=unknown)).status_code == 401
    with recorded_statements(client.keystile) as again:
        for _ in range(3):
            assert (await client.get("/data/export", headers=unknown)).status_code == 401

    assert len(first) == 1
    assert again == []


async def test_flood_of_unknown_keys_leaves_a_valid_key_cached(client: KeystileClient) -> None:
    created = await issue_key(client)
    key = {"X-API-Key": created["key"]}
    assert (await client.get("/data/export", headers=key)).status_code == 200

    for _ in range(25):
        assert (await client.get("/data/export", headers={"X-API-Key": unknown_key()})).status_code == 401

    with recorded_statements(client.keystile) as statements:
        assert (await client.get("/data/export", headers=key)).status_code == 200
    assert statements == []


def verification_counts(metrics_text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "keystile_verifications":
            return {
                sample.labels["outcome"]: sample.value for sample in family.samples if sample.name.endswith("_total")
            }
    return {}


async def test_metrics_count_verifications_by_outcome_after_a_flood_of_bad_keys(client: KeystileClient) -> None:
    created = await issue_key(client)
    malformed, unknown, valid = 20, 7, 3
    # 27 failures stay under the default failure limit (30/60 per address), so every request is verified.
    for _ in range(malformed):
        await client.get("/data/export", headers={"X-API-Key": wrong_checksum(created["key"])})
    for _ in range(unknown):
        await client.get("/data/export", headers={"X-API-Key": unknown_key()})
    for _ in range(valid):
        assert (await client.get("/data/export", headers={"X-API-Key": created["key"]})).status_code == 200

    response = await client.get("/metrics")

    assert response.status_code == 200
    counts = verification_counts(response.text)
    assert counts.get("NOT_FOUND") == malformed + unknown
    assert counts.get("VALID") == valid
