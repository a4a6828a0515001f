"""The shared backend: decisions made by a Lua script inside Redis, so each check and its increment are atomic.

Why not the `limits` library: its `hit()` answers only yes/no, and the remaining count and reset time the headers
need take a second round trip (`get_window_stats`), which is neither atomic with the hit nor within the one round trip
the hot path allows.

Why decisions are batched: redis-py's asyncio client spends far more CPU on each command (packing, pool checkout,
a timeout per reply) than Redis spends running the script, and that cost dominated the rate-limited hot path. The
decisions asked for in the same event-loop turn therefore go to Redis as ONE script call: one command, one round
trip and one reply for the batch. The script runs the decisions one after another, atomically, so each is exactly
what it would have been alone in that order (two on one counter see each other), and no request waits for more than
one round trip. A failed round trip fails every decision in it. Figures: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import NamedTuple

import redis.asyncio as redis
from redis.exceptions import RedisError

from keystile.ratelimit.base import Decision, LimiterUnavailableError, Window

# KEYS[i]: a window's counter; ARGV[3i-2], ARGV[3i-1], ARGV[3i]: its limit, the cost, the counter's expiry in ms.
# Returns each counter's value before its decision. A counter expires a little after its window ends, so Redis
# memory holds only live windows.
_FIXED_WINDOWS = """
local used_before = {}
for i, key in ipairs(KEYS) do
    local used = tonumber(redis.call('GET', key) or '0')
    local cost = tonumber(ARGV[3 * i - 1])
    if cost > 0 and used + cost <= tonumber(ARGV[3 * i - 2]) then
        redis.call('INCRBY', key, cost)
        redis.call('PEXPIRE', key, ARGV[3 * i])
    end
    used_before[i] = used
end
return used_before
"""

KEY_PREFIX = "keystile:rl:"


class _Request(NamedTuple):
    """One decision waiting for its batch: the counter, the script's arguments, and where the answer goes."""

    key: str
    args: tuple[int, int, int]  # limit, cost, expiry in ms
    used_before: asyncio.Future[int]


class RedisRateLimiter:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_FIXED_WINDOWS)  # EVALSHA; loads the script again after a flush
        self._waiting: list[_Request] = []
        self._sending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    @classmethod
    def from_url(cls, url: str) -> RedisRateLimiter:
        # Short timeouts: when Redis is gone a request must fail over to RATE_LIMIT_FAILURE quickly, not hang.
        return cls(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5))

    async def hit(self, bucket: str, *, limit: int, window_seconds: int, cost: int, now: datetime) -> Decision:
        window = Window.at(now, window_seconds)
        expiry_ms = window.end_ms - window.now_ms + 1000
        loop = asyncio.get_running_loop()
        request = _Request(f"{KEY_PREFIX}{bucket}:{window.start_ms}", (limit, cost, expiry_ms), loop.create_future())
        if not self._waiting:
            # The task first runs on the loop's next turn: every decision asked for before then joins this batch.
            task = loop.create_task(self._send_waiting())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._waiting.append(request)
        try:
            used = await request.used_before
        except (RedisError, OSError) as error:
            raise LimiterUnavailableError(str(error)) from error
        decision, _ = window.decide(used_before=used, limit=limit, cost=cost)
        return decision

    async def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            replies = await self._script(keys=[r.key for r in batch], args=[a for r in batch for a in r.args])
        except Exception as error:
            _fail(batch, error)
            return
        except asyncio.CancelledError:  # shutdown: no waiter may be left hanging
            _fail(batch, RedisError("rate limit decision cancelled"))
            raise
        for request, used in zip(batch, replies, strict=True):
            if not request.used_before.done():  # its waiter was cancelled meanwhile (the client went away)
                request.used_before.set_result(int(used))

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._client.aclose()


def _fail(batch: list[_Request], error: Exception) -> None:
    for request in batch:
        if not request.used_before.done():
            request.used_before.set_exception(error)
