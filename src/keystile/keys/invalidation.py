"""Telling every instance that a key changed: locally at once, and to other instances through Redis pub/sub.

A message names the key (its key_id and integer id); each instance drops its cached record and its quota lease for
it. If the subscription drops (Redis restarted), messages may have been missed, so the whole cache is cleared when it
is re-established: correctness first, the cache refills on demand.

The subscription counts as established when Redis confirms it, not when the request is sent: only from then on does
every message reach this instance. `epoch` counts the subscriptions, so a part that relies on having heard every
message since some moment (the key_id index, `keys/key_ids.py`) can tell whether the subscription was lost since.

`caught_up()` is a barrier: it returns once every message Redis delivered before the call has been applied here. It
sends a PING on the subscription connection; Redis answers on that connection after everything it sent there
before, in order. So an announcement published before a request arrived here (the sender's `key_changed` returned
before its caller answered anyone) has been applied when the barrier returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

CHANNEL = "keystile:keys:changed"
RECONNECT_DELAY_SECONDS = 0.5
# How long `caught_up` waits for its PONG before answering False (the caller then asks the database instead).
BARRIER_TIMEOUT_SECONDS = 0.5

OnChange = Callable[[str, int], None]


def _nothing() -> None:
    pass


def _ignore(identity_id: int) -> None:
    pass


def _ignore_reset(ledger: str, holder_id: int) -> None:
    pass


class Invalidator:
    def __init__(
        self,
        on_change: OnChange,
        on_resync: Callable[[], None],
        redis_url: str | None,
        *,
        on_lost: Callable[[], None] = _nothing,
        on_identity_change: Callable[[int], None] = _ignore,
        on_quota_reset: Callable[[str, int], None] = _ignore_reset,
    ) -> None:
        """`on_resync` runs each time a subscription is confirmed (what was cached may have missed messages);
        `on_lost` each time a confirmed subscription ends."""
        self._on_change = on_change
        self._on_resync = on_resync
        self._on_lost = on_lost
        self._on_identity_change = on_identity_change
        self._on_quota_reset = on_quota_reset
        self._client = (
            redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5) if redis_url else None
        )
        self._redis_url = redis_url
        self.subscribed = asyncio.Event()
        self.epoch = 0  # confirmed subscriptions so far
        self._pubsub: PubSub | None = None  # while subscribed
        self._tags = itertools.count()
        self._waiting: list[asyncio.Future[bool]] = []  # callers of caught_up() for whom no PING is sent yet
        self._barriers: dict[bytes, list[asyncio.Future[bool]]] = {}  # by PING tag: who waits for its PONG
        self._pinger: asyncio.Task[None] | None = None

    async def key_changed(self, key_id: str, api_key_id: int) -> None:
        """Apply the change here at once, then tell the other instances (best effort: the cache TTL is the backstop)."""
        self._on_change(key_id, api_key_id)
        await self._publish({"key_id": key_id, "id": api_key_id})

    async def identity_changed(self, identity_id: int) -> None:
        """Like `key_changed`, for an identity: every instance drops what it cached of the identity's keys."""
        self._on_identity_change(identity_id)
        await self._publish({"identity_id": identity_id})

    async def quota_reset(self, ledger: str, holder_id: int) -> None:
        """A balance was set anew (`ledger` "key" or "identity"): every instance drops its lease on it unreturned.
        Only then: a lease dropped on any other change would lose its units."""
        self._on_quota_reset(ledger, holder_id)
        await self._publish({"quota_reset": ledger, "id": holder_id})

    async def _publish(self, message: dict[str, object]) -> None:
        if self._client is None:
            return
        try:
            await self._client.publish(CHANNEL, json.dumps(message))
        except (RedisError, OSError) as error:
            logger.warning("could not broadcast a key change; other instances see it within the cache TTL: %s", error)

    async def listen(self) -> None:
        """Run until cancelled: apply other instances' changes as they arrive, resubscribing after failures."""
        if self._redis_url is None:
            return
        while True:
            subscriber = redis.Redis.from_url(self._redis_url, socket_connect_timeout=0.5)
            try:
                async with subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        kind = message.get("type")
                        if kind == "message":
                            self._apply(message.get("data"))
                        elif kind == "pong":
                            self._answer(message.get("data"), True)
                        elif kind == "subscribe":
                            self._pubsub = pubsub
                            self.epoch += 1
                            self._on_resync()
                            self.subscribed.set()
            except (RedisError, OSError) as error:
                if self.subscribed.is_set():
                    logger.warning("key-change subscription lost, reconnecting: %s", error)
            finally:
                self._ended()
                await subscriber.aclose()
            await asyncio.sleep(RECONNECT_DELAY_SECONDS)

    def caught_up(self) -> Awaitable[bool]:
        """Whether every message Redis delivered before this call has been applied here; False when not subscribed.

        One PING answers every caller that arrived before it was sent, so a burst of callers costs one round trip. A
        future rather than a coroutine: refusing a made-up key waits on this, and a coroutine frame costs more.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        if self._pubsub is None:
            waiter.set_result(False)
            return waiter
        self._waiting.append(waiter)
        if self._pinger is None:
            self._pinger = loop.create_task(self._ping())
        return waiter

    async def _ping(self) -> None:
        """Send PINGs while callers wait for one: each PING answers those who arrived before it was sent."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting and (pubsub := self._pubsub) is not None and pubsub.connection is not None:
                batch, self._waiting = self._waiting, []
                tag = str(next(self._tags)).encode()
                self._barriers[tag] = batch
                loop.call_later(BARRIER_TIMEOUT_SECONDS, self._answer, tag, False)
                connection = pubsub.connection
                try:
                    # The connection's own send, not PubSub.ping: half the cost, and no reconnect from this task
                    # (the listener owns reconnecting).
                    await connection.send_packed_command(connection.pack_command("PING", tag), check_health=False)
                except (RedisError, OSError):
                    self._answer(tag, False)
        finally:
            self._pinger = None
            self._release(self._waiting, False)
            self._waiting = []

    def _answer(self, tag: object, caught_up: bool) -> None:
        if isinstance(tag, bytes):
            self._release(self._barriers.pop(tag, []), caught_up)

    def _ended(self) -> None:
        """The subscription ended (or never was): nothing may count as caught up until the next one is confirmed."""
        self._pubsub = None
        for tag in list(self._barriers):
            self._answer(tag, False)
        if self.subscribed.is_set():
            self.subscribed.clear()
            self._on_lost()

    @staticmethod
    def _release(waiters: list[asyncio.Future[bool]], caught_up: bool) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(caught_up)

    def _apply(self, data: object) -> None:
        try:
            payload = json.loads(data)  # type: ignore[arg-type]
            if "identity_id" in payload:
                self._on_identity_change(int(payload["identity_id"]))
                return
            if "quota_reset" in payload:
                self._on_quota_reset(str(payload["quota_reset"]), int(payload["id"]))
                return
            key_id, api_key_id = str(payload["key_id"]), int(payload["id"])
        except (TypeError, ValueError, KeyError):
            logger.warning("ignoring a malformed key-change message")
            return
        self._on_change(key_id, api_key_id)

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self._client is not None:
            await self._client.aclose()
