"""The in-process cache of verified key records, so a cache hit costs no I/O at all.

Bounded (least recently used entries go first) and short-lived (entries expire after `ttl_seconds`, a backstop should
an invalidation message ever be lost). Unknown key_ids are remembered in a separate, smaller table, so a flood of
made-up keys can neither reach the database repeatedly nor evict the valid keys that real clients use.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from keystile.keys.verification import KeyRecord

V = TypeVar("V")

DEFAULT_TTL_SECONDS = 10.0
DEFAULT_MAX_KEYS = 100_000
DEFAULT_MAX_UNKNOWN = 10_000


class _TTLCache(Generic[V]):
    def __init__(self, max_entries: int, ttl_seconds: float, monotonic: Callable[[], float]) -> None:
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._monotonic = monotonic

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self._entries[key] = (self._monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class KeyCache:
    def __init__(
        self,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_unknown: int = DEFAULT_MAX_UNKNOWN,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._known: _TTLCache[KeyRecord] = _TTLCache(max_keys, ttl_seconds, monotonic)
        self._unknown: _TTLCache[bool] = _TTLCache(max_unknown, ttl_seconds, monotonic)
        # get(key_id) -> the cached record or None. Bound directly: it runs on every verification.
        self.get = self._known.get

    def is_known_unknown(self, key_id: str) -> bool:
        return self._unknown.get(key_id) is not None

    def put(self, key_id: str, record: KeyRecord | None) -> None:
        if record is None:
            self._unknown.put(key_id, True)
        else:
            self._known.put(key_id, record)

    def invalidate(self, key_id: str) -> None:
        self._known.pop(key_id)
        self._unknown.pop(key_id)

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()

    @property
    def size(self) -> int:
        return len(self._known)
