"""The in-process cache of verified key records, so a cache hit costs no I/O at all.

Bounded (least recently used entries go first) and short-lived (entries go stale after `ttl_seconds`, a backstop
should an invalidation message ever be lost). While this instance is subscribed to invalidations, and so hears of
every change as it happens, its owner lengthens the lifetime (`set_ttl`, `SUBSCRIBED_TTL_SECONDS`), and shortens it
again, for what is cached too, the moment the subscription is lost. Unknown key_ids are remembered in a separate,
smaller table, so a flood of made-up keys can neither reach the database repeatedly nor evict the valid keys that
real clients use.

Loads are single-flight: however many requests miss on one key_id at once (a busy key whose entry just went stale),
one database query answers them all, and a change to the key while that query runs keeps its answer out of the cache.

Stale if error: a stale entry is never served while the database answers, but when the reload fails because the
database is unreachable (`keystile.db.is_database_unavailable`), it is served for up to `stale_if_error_seconds` past
its refresh time, so keys that were just working survive a database restart or failover. Keys never seen still need
the database; an invalidation (a change broadcast by another instance) still drops an entry at once.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from keystile.db import is_database_unavailable
from keystile.keys.records import KeyRecord

V = TypeVar("V")

DEFAULT_TTL_SECONDS = 10.0
# While subscribed to invalidations: the backstop then only covers an announcement lost on the sender's side (its
# publish failed; it logs that), so misses are rarer: with many keys each used rarely, 6x fewer reloads per key.
SUBSCRIBED_TTL_SECONDS = 60.0
DEFAULT_MAX_KEYS = 100_000
DEFAULT_MAX_UNKNOWN = 10_000
DEFAULT_STALE_IF_ERROR_SECONDS = 0.0  # a bare cache serves nothing stale; Keystile passes the setting (300 s)


class _TTLCache(Generic[V]):
    def __init__(
        self, max_entries: int, ttl_seconds: float, stale_seconds: float, monotonic: Callable[[], float]
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()  # key -> (refresh time, value)
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._stale_seconds = stale_seconds
        self._monotonic = monotonic

    def get(self, key: str) -> V | None:
        """The value while fresh, else None. A stale entry is kept for `stale` while it may still be needed."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._monotonic():
            # Stale: kept for `stale` (a database outage) until too old even for that. A fresh hit never gets here.
            if expires + self._stale_seconds <= self._monotonic():
                del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def stale(self, key: str) -> V | None:
        """The value, fresh or up to `stale_seconds` past its refresh time: what to serve while a reload fails."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires + self._stale_seconds <= self._monotonic():
            del self._entries[key]
            return None
        return value

    def put(self, key: str, value: V) -> None:
        self._entries[key] = (self._monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def drop_where(self, condition: Callable[[V], bool]) -> None:
        for key in [key for key, (_, value) in self._entries.items() if condition(value)]:
            del self._entries[key]

    def set_ttl(self, ttl_seconds: float) -> None:
        """Entries put from now on are fresh for `ttl_seconds`; none already cached stays fresh longer than that from
        now. One pass over the entries, only when the lifetime shrinks (a subscription lost: rare)."""
        if ttl_seconds < self._ttl:
            latest = self._monotonic() + ttl_seconds
            for key, (expires, value) in list(self._entries.items()):
                if expires > latest:
                    self._entries[key] = (latest, value)
        self._ttl = ttl_seconds

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
        stale_if_error_seconds: float = DEFAULT_STALE_IF_ERROR_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._known: _TTLCache[KeyRecord] = _TTLCache(max_keys, ttl_seconds, stale_if_error_seconds, monotonic)
        self._unknown: _TTLCache[bool] = _TTLCache(max_unknown, ttl_seconds, stale_if_error_seconds, monotonic)
        # get(key_id) -> the cached record or None; bound once, it runs on every verification (bench_verify).
        self.get = self._known.get
        self._loading: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def get_or_load(self, key_id: str, load: Callable[[str], Awaitable[KeyRecord | None]]) -> KeyRecord | None:
        """The cached record (None for a remembered unknown key_id), else what `load` finds, which is then cached.

        When `load` fails because the database is unavailable, the stale answer (record or unknown) is returned if it
        is within `stale_if_error_seconds` of its refresh time; otherwise the error propagates.
        """
        record = self.get(key_id)
        if record is not None or self.is_known_unknown(key_id):
            return record
        loading = self._loading.get(key_id)
        if loading is None:
            loading = asyncio.ensure_future(load(key_id))
            self._loading[key_id] = loading
            loading.add_done_callback(functools.partial(self._loaded, key_id))
        try:
            # Shielded: a client that goes away must not cancel the query other requests are waiting for.
            return await asyncio.shield(loading)
        except Exception as error:
            if is_database_unavailable(error):
                if (stale := self._known.stale(key_id)) is not None:
                    return stale
                if self._unknown.stale(key_id) is not None:
                    return None
            raise

    def _loaded(self, key_id: str, loading: asyncio.Future[KeyRecord | None]) -> None:
        if self._loading.get(key_id) is not loading:
            return  # invalidated meanwhile: the answer may predate the change, so it is not cached
        del self._loading[key_id]
        if not loading.cancelled() and loading.exception() is None:
            self.put(key_id, loading.result())

    def is_known_unknown(self, key_id: str) -> bool:
        return self._unknown.get(key_id) is not None

    def put(self, key_id: str, record: KeyRecord | None) -> None:
        if record is None:
            self._unknown.put(key_id, True)
        else:
            self._known.put(key_id, record)

    def set_ttl(self, ttl_seconds: float) -> None:
        """How long entries stay fresh from now on; a shorter lifetime applies to what is cached too, from now."""
        self._known.set_ttl(ttl_seconds)
        self._unknown.set_ttl(ttl_seconds)

    def invalidate(self, key_id: str) -> None:
        self._known.pop(key_id)
        self._unknown.pop(key_id)
        self._loading.pop(key_id, None)

    def invalidate_identity(self, identity_id: int) -> None:
        """Drop the records of an identity's keys. A scan, for a change that is rare (an identity's limits); loads
        in flight may be of its keys, so none of their answers is cached."""
        self._known.drop_where(lambda record: record.identity is not None and record.identity.id == identity_id)
        self._loading.clear()

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()
        self._loading.clear()

    def __len__(self) -> int:
        """How many known keys are cached, stale ones kept for a database outage included."""
        return len(self._known)
