"""The key_id index (keys/key_ids.py): made-up keys are refused without the database, never a key that exists.

Refusing from the index relies on every creation being announced: `KeyManager.create` and `.rotate` (the successor)
announce the new key after the commit, through the same path as any change.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from redis.asyncio.client import PubSub

from keystile.keys import format as key_format
from keystile.keys.key_ids import KeyIdIndex
from keystile.keys.records import Outcome
from tests.conftest import MakeClient
from tests.helpers import EXPORT, KeystileClient, create_key, key_header, recorded_statements, user_headers
from tests.keys.background import WAIT_SECONDS, eventually
from tests.ratelimit.conftest import RedisServer


def made_up_key() -> str:
    return key_format.generate_key("ks").raw


def random_key_ids(count: int, seed: int) -> list[str]:
    chooser = random.Random(seed)
    alphabet = key_format.BASE62_ALPHABET
    return ["".join(chooser.choices(alphabet, k=key_format.KEY_ID_LENGTH)) for _ in range(count)]


# Unit: KeyIdIndex


def test_the_index_holds_every_key_id_it_was_given_and_no_other() -> None:
    index = KeyIdIndex()
    present, absent = random_key_ids(20_000, seed=1), random_key_ids(20_000, seed=2)
    for key_id in present:
        index.add(key_id)

    assert all(key_id in index for key_id in present)
    assert not any(key_id in index for key_id in absent)  # a false positive has a chance of 20,000 / 2**64 each
    assert len(index) == len(present)


async def batches_of(key_ids: list[str], size: int) -> AsyncIterator[Iterable[str]]:
    for start in range(0, len(key_ids), size):
        await asyncio.sleep(0)
        yield key_ids[start : start + size]


async def test_a_built_index_equals_one_added_to_key_by_key_and_holds_eight_bytes_a_key() -> None:
    present = random_key_ids(50_000, seed=3)
    built = await KeyIdIndex.build(batches_of([*present, *present[:100]], size=7_000))  # some twice
    added = KeyIdIndex()
    for key_id in present:
        added.add(key_id)
        added.add(key_id)

    assert len(built) == len(added) == len(present)
    assert all(key_id in built for key_id in present)
    assert not any(key_id in built for key_id in random_key_ids(20_000, seed=4))
    assert built.nbytes() == 8 * len(present)


# Through the app


async def index_current(client: KeystileClient) -> None:
    """Wait until the instance's subscription is confirmed and its index loaded under it."""
    keystile = client.keystile
    await asyncio.wait_for(keystile.invalidator.subscribed.wait(), WAIT_SECONDS)
    await eventually(lambda: keystile.key_ids.index is not None)


async def verify(client: KeystileClient, key: str) -> Outcome:
    """Through the verifier itself: the per-address failure throttle would stop a flood sent over HTTP."""
    return (await client.keystile.verifier.verify(key)).outcome


@pytest.mark.redis
async def test_made_up_keys_are_refused_without_reading_the_database(make_client: MakeClient, redis_url: str) -> None:
    client = await make_client(redis_url=redis_url)
    created = await create_key(client, await user_headers(client))
    await index_current(client)

    with recorded_statements(client.keystile) as statements:
        outcomes = [await verify(client, made_up_key()) for _ in range(50)]
        concurrent = await asyncio.gather(*(verify(client, made_up_key()) for _ in range(50)))

    assert set(outcomes) == set(concurrent) == {Outcome.NOT_FOUND}
    assert statements == []
    assert await verify(client, created["key"]) is Outcome.VALID


LAG_SECONDS = 0.05


@pytest.mark.redis
async def test_a_key_created_on_one_instance_is_accepted_at_once_by_another(
    make_client: MakeClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parse_response = PubSub.parse_response

    async def lagging(self: PubSub, **options: Any) -> Any:
        response = await parse_response(self, **options)
        await asyncio.sleep(LAG_SECONDS)  # a busy instance: each message waits before it is handled
        return response

    monkeypatch.setattr(PubSub, "parse_response", lagging)
    a, b = await make_client(redis_url=redis_url), await make_client(redis_url=redis_url)
    headers = await user_headers(a)
    await index_current(a)
    await index_current(b)

    for _ in range(3):
        created = await create_key(a, headers)
        # B has not handled the announcement yet (it lags); the barrier waits until it has.
        assert (await b.get(EXPORT, headers=key_header(created))).status_code == 200

    rotated = await a.post(f"/keys/{created['id']}/rotate", json={"grace_seconds": 60}, headers=headers)
    assert rotated.status_code == 201, rotated.text
    assert (await b.get(EXPORT, headers=key_header(rotated.json()))).status_code == 200


@pytest.mark.redis
async def test_a_key_created_while_the_index_loads_is_in_it_once_loaded(
    make_client: MakeClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await make_client(redis_url=redis_url)
    headers = await user_headers(a)
    await index_current(a)
    snapshot_read, go_on = asyncio.Event(), asyncio.Event()
    build = KeyIdIndex.build

    async def gated(batches: AsyncIterator[Iterable[str]]) -> KeyIdIndex:
        read = [batch async for batch in batches]  # the snapshot's query has run: what commits now is not in it
        snapshot_read.set()
        await go_on.wait()
        return await build(batches_of([key_id for batch in read for key_id in batch], size=1000))

    monkeypatch.setattr(KeyIdIndex, "build", gated)
    b = await make_client(redis_url=redis_url)
    await asyncio.wait_for(snapshot_read.wait(), WAIT_SECONDS)
    created = await create_key(a, headers)  # announced while B's load is between its query and its install
    go_on.set()
    await index_current(b)

    index, key_id = b.keystile.key_ids.index, key_format.key_id_of(created["key"], "ks")
    assert index is not None
    assert key_id is not None
    assert key_id in index
    assert await verify(b, created["key"]) is Outcome.VALID


@pytest.mark.redis
async def test_a_key_whose_announcement_was_lost_is_found_by_the_periodic_refresh(
    make_client: MakeClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(redis_url=redis_url)
    headers = await user_headers(client)
    await index_current(client)

    async def lost(*_args: Any) -> None:
        pass  # the creator's publish failed: nobody hears of the key

    monkeypatch.setattr(client.keystile.invalidator, "key_changed", lost)
    created = await create_key(client, headers)
    refused_before = await verify(client, created["key"])
    await client.keystile.key_ids.refresh()  # what runs every REFRESH_SECONDS

    assert refused_before is Outcome.NOT_FOUND  # the documented window: up to REFRESH_SECONDS
    assert await verify(client, created["key"]) is Outcome.VALID


async def test_without_redis_every_unknown_key_id_is_read_from_the_database(make_client: MakeClient) -> None:
    # One process alone cannot know of keys a worker or the CLI created: without the subscription nothing is refused
    # from the index, and the index is not even loaded.
    client = await make_client()

    with recorded_statements(client.keystile) as statements:
        refused = await verify(client, made_up_key())

    assert refused is Outcome.NOT_FOUND
    assert len(statements) == 1
    assert client.keystile.key_ids.index is None


async def test_while_the_subscription_is_lost_unknown_key_ids_are_read_from_the_database(
    make_client: MakeClient, own_redis: RedisServer
) -> None:
    client = await make_client(redis_url=own_redis.url)
    await index_current(client)
    invalidator = client.keystile.invalidator

    own_redis.stop()
    await eventually(lambda: not invalidator.subscribed.is_set())
    with recorded_statements(client.keystile) as while_lost:
        assert await verify(client, made_up_key()) is Outcome.NOT_FOUND
    own_redis.start()
    await index_current(client)  # resubscribed, and the index loaded anew under the new subscription
    with recorded_statements(client.keystile) as after:
        assert await verify(client, made_up_key()) is Outcome.NOT_FOUND

    assert len(while_lost) == 1
    assert after == []
