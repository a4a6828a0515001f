"""keystile.keys.invalidation: a key change applies here at once and reaches other instances through Redis pub/sub;
a malformed message is ignored and the listener carries on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as redis

from keystile.keys.invalidation import CHANNEL, Invalidator

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
WAIT_SECONDS = 5.0


class Recorder:
    """The callbacks of one Invalidator: every change it applied, in order, and how often it resynced."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.resyncs = 0

    def on_change(self, key_id: str, api_key_id: int) -> None:
        self.changes.put_nowait((key_id, api_key_id))

    def on_resync(self) -> None:
        self.resyncs += 1

    def applied(self) -> list[tuple[str, int]]:
        """The changes applied so far, without waiting."""
        applied = []
        while not self.changes.empty():
            applied.append(self.changes.get_nowait())
        return applied

    async def next_change(self) -> tuple[str, int]:
        return await asyncio.wait_for(self.changes.get(), WAIT_SECONDS)


@asynccontextmanager
async def invalidator(recorder: Recorder, redis_url: str | None) -> AsyncIterator[Invalidator]:
    subject = Invalidator(recorder.on_change, recorder.on_resync, redis_url)
    try:
        yield subject
    finally:
        await subject.close()


@asynccontextmanager
async def listening(subject: Invalidator) -> AsyncIterator[asyncio.Task[None]]:
    """`subject` listening in the background, subscribed before the block starts; cancelled after it."""
    task = asyncio.create_task(subject.listen())
    try:
        await asyncio.wait_for(subject.subscribed.wait(), WAIT_SECONDS)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def peer(redis_url: str) -> AsyncIterator[redis.Redis]:
    """A plain Redis connection, to publish raw messages on the key-change channel as a misbehaving peer could."""
    connection = redis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def test_without_redis_a_change_applies_locally_and_listen_returns_at_once() -> None:
    recorder = Recorder()
    async with invalidator(recorder, None) as local:
        await local.key_changed("abc123", 7)
        await asyncio.wait_for(local.listen(), WAIT_SECONDS)

    assert recorder.applied() == [("abc123", 7)]
    assert recorder.resyncs == 0
    assert not local.subscribed.is_set()


async def test_a_change_applies_locally_even_when_redis_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="keystile.keys.invalidation")
    async with invalidator(recorder, UNREACHABLE_REDIS) as local:
        await local.key_changed("abc123", 7)

    assert recorder.applied() == [("abc123", 7)]
    assert "could not broadcast a key change" in caplog.text


@pytest.mark.redis
async def test_a_change_published_by_one_instance_is_applied_by_another(redis_url: str) -> None:
    here, there = Recorder(), Recorder()
    async with invalidator(here, redis_url) as a, invalidator(there, redis_url) as b, listening(b) as listener:
        assert there.resyncs == 1  # subscribing clears the whole cache: changes may have been missed before

        await a.key_changed("abc123", 7)
        await a.key_changed("def456", 8)

        assert here.applied() == [("abc123", 7), ("def456", 8)]  # by the sender itself, at once
        assert await there.next_change() == ("abc123", 7)
        assert await there.next_change() == ("def456", 8)
        assert not listener.done()


@pytest.mark.redis
@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(json.dumps({"key_id": "abc123"}), id="no-id"),
        pytest.param(json.dumps({"id": 7}), id="no-key-id"),
        pytest.param(json.dumps({"key_id": "abc123", "id": "seven"}), id="id-not-a-number"),
        pytest.param(json.dumps({"key_id": "abc123", "id": None}), id="id-null"),
    ],
)
async def test_a_malformed_message_is_ignored_and_the_listener_carries_on(
    redis_url: str,
    peer: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    message: bytes | str,
) -> None:
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="keystile.keys.invalidation")
    async with invalidator(recorder, redis_url) as subject, listening(subject) as listener:
        assert await peer.publish(CHANNEL, message) == 1  # one subscriber: the listener
        await peer.publish(CHANNEL, json.dumps({"key_id": "after", "id": 9}))

        # Pub/sub keeps the order of messages: the next change applied is the valid one sent after the bad one.
        assert await recorder.next_change() == ("after", 9)
        assert recorder.applied() == []
        assert not listener.done()

    assert [r.getMessage() for r in caplog.records if r.name == "keystile.keys.invalidation"] == [
        "ignoring a malformed key-change message"
    ]
