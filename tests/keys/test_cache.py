"""The verification cache: bounded, short-lived, never defeated by a revoke, and cheap under a flood of bad keys."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

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
        name="k",
        scopes=frozenset(),
        ip_networks=(),
        metadata=MappingProxyType({}),
        expires_at=None,
        is_active=True,
        rate_limit=None,
        quota_holder_id=None,
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


# Through the app


async def issue_key(client: KeystileClient, **body: Any) -> dict[str, Any]:
    headers = await user_headers(client)
    created = await create_key(client, headers, **body)
    created["headers"] = headers
    return created


async def test_second_use_of_a_key_sends_no_sql(client: KeystileClient) -> None:
    created = await issue_key(client)
    key = {"X-API-Key": created["key"]}
    with recorded_statements(client.keystile.engine) as first:
        assert (await client.get("/data/export", headers=key)).status_code == 200
    assert first, "the first use must load the key from the database"

    with recorded_statements(client.keystile.engine) as second:
        for _ in range(5):
            assert (await client.get("/data/export", headers=key)).status_code == 200

    assert second == []


async def test_concurrent_first_uses_of_a_key_send_one_select(client: KeystileClient) -> None:
    created = await issue_key(client)
    key = {"X-API-Key": created["key"]}
    client.keystile.key_cache.clear()

    with recorded_statements(client.keystile.engine) as statements:
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

    with recorded_statements(client.keystile.engine) as statements:
        response = await client.get("/data/export", headers={"X-API-Key": malformed})

    assert response.status_code == 401
    assert statements == []
    assert len(client.keystile.key_cache) == 0


async def test_unknown_key_id_is_looked_up_once_then_answered_from_the_cache(client: KeystileClient) -> None:
    unknown = {"X-API-Key": unknown_key()}
    with recorded_statements(client.keystile.engine) as first:
        assert (await client.get("/data/export", headers=unknown)).status_code == 401
    with recorded_statements(client.keystile.engine) as again:
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

    with recorded_statements(client.keystile.engine) as statements:
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
