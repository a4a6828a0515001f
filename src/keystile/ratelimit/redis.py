"""The shared backend: one Lua script per decision, so the check and the increment are one atomic round trip.

Why not the `limits` library: its `hit()` answers only yes/no, and the remaining count and reset time the headers
need take a second round trip (`get_window_stats`), which is neither atomic with the hit nor within the one round trip
the hot path allows.
"""

from __future__ import annotations

from datetime import datetime

import redis.asyncio as redis
from redis.exceptions import RedisError

from keystile.ratelimit.base import Decision, LimiterUnavailableError, Window

# KEYS[1]: the window's counter. ARGV: limit, cost, expiry in ms. Returns the count before this request.
# The counter expires a little after its window ends, so Redis memory holds only live windows.
_FIXED_WINDOW = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
if cost > 0 and used + cost <= limit then
    redis.call('INCRBY', KEYS[1], cost)
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return used
"""

KEY_PREFIX = "keystile:rl:"


class RedisRateLimiter:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_FIXED_WINDOW)

    @classmethod
    def from_url(cls, url: str) -> RedisRateLimiter:
        # Short timeouts: when Redis is gone a request must fail over to RATE_LIMIT_FAILURE quickly, not hang.
        return cls(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5))

    async def hit(self, bucket: str, *, limit: int, window_seconds: int, cost: int, now: datetime) -> Decision:
        window = Window.at(now, window_seconds)
        key = f"{KEY_PREFIX}{bucket}:{window.start_ms}"
        expiry_ms = window.end_ms - window.now_ms + 1000
        try:
            used = int(await self._script(keys=[key], args=[limit, cost, expiry_ms]))
        except (RedisError, OSError) as error:
            raise LimiterUnavailableError(str(error)) from error
        decision, _ = window.decide(used_before=used, limit=limit, cost=cost)
        return decision

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._client.aclose()
