"""Telling every instance that a key changed: locally at once, and to other instances through Redis pub/sub.

A message names the key (its key_id and integer id); each instance drops its cached record and its quota lease for
it. If the subscription drops (Redis restarted), messages may have been missed, so the whole cache is cleared when it
is re-established: correctness first, the cache refills on demand.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

CHANNEL = "keystile:keys:changed"
RECONNECT_DELAY_SECONDS = 0.5

OnChange = Callable[[str, int], None]


class Invalidator:
    def __init__(self, on_change: OnChange, on_resync: Callable[[], None], redis_url: str | None) -> None:
        self._on_change = on_change
        self._on_resync = on_resync
        self._client = (
            redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=0.5) if redis_url else None
        )
        self._redis_url = redis_url
        self.subscribed = asyncio.Event()

    async def key_changed(self, key_id: str, api_key_id: int) -> None:
        """Apply the change here at once, then tell the other instances (best effort: the cache TTL is the backstop)."""
        self._on_change(key_id, api_key_id)
        if self._client is None:
            return
        try:
            await self._client.publish(CHANNEL, json.dumps({"key_id": key_id, "id": api_key_id}))
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
                    self._on_resync()
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._apply(message.get("data"))
            except (RedisError, OSError) as error:
                if self.subscribed.is_set():
                    logger.warning("key-change subscription lost, reconnecting: %s", error)
                self.subscribed.clear()
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
            finally:
                await subscriber.aclose()

    def _apply(self, data: object) -> None:
        try:
            payload = json.loads(data)  # type: ignore[arg-type]
            key_id, api_key_id = str(payload["key_id"]), int(payload["id"])
        except (TypeError, ValueError, KeyError):
            logger.warning("ignoring a malformed key-change message")
            return
        self._on_change(key_id, api_key_id)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
