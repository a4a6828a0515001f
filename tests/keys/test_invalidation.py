"""keystile.keys.invalidation: a key change applies here at once and reaches other instances through Redis pub/sub;
a malformed message is ignored and the listener carries on; `caught_up` returns only after every message published
before it was applied, and the subscription's epochs and losses are reported."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as redis
from redis.asyncio.connection import Connection

from keystile.keys.invalidation import CHANNEL, Invalidator
from tests.ratelimit.conftest import RedisServer

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
WAIT_SECONDS = 5.0


class Recorder:
    """The callbacks of one Invalidator: every change it applied, in order, how often it resynced and lost it."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.resyncs = 0
        self.losses = 0
        self.lost = asyncio.Event()

    def on_lost(self) -> None:
        self.losses += 1
        self.lost.set()

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
    subject = Invalidator(recorder.on_change, recorder.on_resync, redis_url, on_lost=recorder.on_lost)
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
        assert await peer.publish(CHANNEL, message) >= 1  # the listener (and any other test run on this Redis)
        await peer.publish(CHANNEL, json.dumps({"key_id": "after", "id": 9}))

        # Pub/sub keeps the order of messages: the next change applied is the valid one sent after the bad one.
        assert await recorder.next_change() == ("after", 9)
        assert recorder.applied() == []
        assert not listener.done()

    assert [r.getMessage() for r in caplog.records if r.name == "keystile.keys.invalidation"] == [
        "ignoring a malformed key-change message"
    ]


# The barrier: caught_up


async def test_without_redis_nothing_counts_as_caught_up() -> None:
    async with invalidator(Recorder(), None) as local:
        assert await local.caught_up() is False


@pytest.mark.redis
async def test_caught_up_returns_once_every_message_published_before_it_was_applied(
    redis_url: str, peer: redis.Redis
) -> None:
    recorder = Recorder()
    async with invalidator(recorder, redis_url) as subject, listening(subject):
        for number in range(20):
            await peer.publish(CHANNEL, json.dumps({"key_id": f"key{number}", "id": number}))

            assert await subject.caught_up() is True
            # Applied by the time the barrier returned, without waiting any further (other test runs on this Redis
            # may publish on the channel too, hence "in").
            assert (f"key{number}", number) in recorder.applied()


@pytest.mark.redis
async def test_callers_waiting_at_once_share_one_ping(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[object] = []
    send = Connection.send_packed_command

    async def counted(self: Connection, command: Any, **options: Any) -> None:
        commands.append(command)
        await send(self, command, **options)

    async with invalidator(Recorder(), redis_url) as subject, listening(subject):
        monkeypatch.setattr(Connection, "send_packed_command", counted)
        answers = await asyncio.gather(*(subject.caught_up() for _ in range(50)))

    assert answers == [True] * 50
    assert len([command for command in commands if b"PING" in b"".join(command)]) == 1


async def test_each_confirmed_subscription_is_an_epoch_and_each_loss_is_reported(own_redis: RedisServer) -> None:
    recorder = Recorder()
    async with invalidator(recorder, own_redis.url) as subject, listening(subject):
        assert (subject.epoch, recorder.resyncs, recorder.losses) == (1, 1, 0)

        own_redis.stop()
        await asyncio.wait_for(recorder.lost.wait(), WAIT_SECONDS)
        assert recorder.losses == 1
        assert not subject.subscribed.is_set()
        assert await subject.caught_up() is False  # nothing can be caught up with while unsubscribed

        own_redis.start()
        await asyncio.wait_for(subject.subscribed.wait(), WAIT_SECONDS)
        assert (subject.epoch, recorder.resyncs, recorder.losses) == (2, 2, 1)
        assert await subject.caught_up() is True
