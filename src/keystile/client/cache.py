"""`VerifyCache`: VALID answers of verify kept in memory for a few seconds. Off unless `cache_ttl > 0`.

The trade-off, in full in docs/CLIENT.md: a cached answer never reaches the server, so it spends no rate limit or
quota, is not counted in the key's usage, and hides a revoke, a change of scopes or an exhausted quota for up to
`cache_ttl` seconds. Only VALID answers are kept (every refusal is asked again), never past the key's own
`expires_at`, and keyed by a SHA-256 of the key so the cache holds no raw key.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import UTC, datetime

from keystile.client.calls import Call
from keystile.client.models import VerifyResult

DEFAULT_MAX_ENTRIES = 10_000


class VerifyCache:
    """VALID results by (key digest, scopes, cost, ip), each for `ttl` seconds; the oldest go first beyond
    `max_entries`. Thread-safe, so one sync client can serve several threads."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if ttl < 0:
            raise ValueError("cache_ttl must be 0 (off) or positive")
        self.ttl = ttl
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._now = now
        self._entries: OrderedDict[Hashable, tuple[float, VerifyResult]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, call: Call[VerifyResult]) -> VerifyResult | None:
        if not self.ttl or call.cache_key is None:
            return None
        with self._lock:
            entry = self._entries.get(call.cache_key)
            if entry is None:
                return None
            deadline, result = entry
            if self._monotonic() >= deadline:
                del self._entries[call.cache_key]
                return None
            return result

    def keep(self, call: Call[VerifyResult], result: VerifyResult) -> VerifyResult:
        """Remember `result` if it is VALID; return it either way."""
        if not self.ttl or call.cache_key is None or not result.valid:
            return result
        lifetime = self.ttl
        if result.expires_at is not None:  # never serve a key as valid after it has expired
            lifetime = min(lifetime, (result.expires_at - self._now()).total_seconds())
        if lifetime <= 0:
            return result
        with self._lock:
            self._entries[call.cache_key] = (self._monotonic() + lifetime, result)
            self._entries.move_to_end(call.cache_key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return result
