"""Which key_ids exist, held in memory, so that a made-up key is refused without reading the database.

Anyone can mint well-formed keys (the checksum is public), and without this each new made-up key_id costs a database
read: the negative cache does not help against ids that are all different, and the per-address failure throttle stops
one address, not a thousand. With the index, a flood of made-up keys costs the database nothing
(docs/PERFORMANCE.md, "Floods of made-up keys").

The guarantee: a key_id is refused here only if no key with it was committed before the request arrived. A key_id
missing from the index is refused without the database only when all of these hold, and otherwise it is looked up as
before:
- every process announces the keys it creates through the invalidation channel (`KeyManager.create` and `.rotate`
  announce the new key after the commit, like any change);
- this instance is subscribed to that channel (Redis configured and reachable), and the index was loaded under the
  current subscription: it holds every key committed before its load began, and every key announced since;
- a barrier on the subscription (`Invalidator.caught_up`) shows that every announcement published before the request
  arrived has been applied here. So a key created on another instance and used here a moment later is found: its
  creator announced it before handing it out.
A creation whose announcement was lost (the creator's publish failed: it logs a warning) is picked up by the periodic
refresh, within `REFRESH_SECONDS` (twice that for a creating transaction that takes longer than that to commit).
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from keystile.db import DatabaseIncidents
from keystile.keys.invalidation import Invalidator
from keystile.keys.models import ApiKey

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 10.0  # the backstop for a lost announcement, as the cache TTL is for a lost change
RETRY_SECONDS = 5.0  # after a failed load
LOAD_BATCH = 2_000  # rows per step of a load: the event loop runs between steps

_BUCKET_BITS = 12
_BUCKETS = 1 << _BUCKET_BITS
_MASK = _BUCKETS - 1


class KeyIdIndex:
    """A set of key_ids held as 64-bit fingerprints, 8 bytes each: 8 MB for 1,000,000 keys (bench_scale).

    The fingerprint is `hash(key_id)`: Python's SipHash of the string, keyed anew for each process, computed once per
    string and cached on it. A made-up key_id that shares a fingerprint with a real one (a chance of n / 2**64) is
    looked up in the database, as every key_id was before; the index never misses a key_id it was given.

    Fingerprints live in 4,096 sorted arrays, chosen by their low bits. A Python set of ints would cost about 70 bytes a
    key; one sorted array would need a sort of every fingerprint at once to build (0.8 s at 1M, holding the event
    loop) and a copy of the whole array to insert into. Small buckets are sorted a few at a time and take an insert in
    place; a lookup is one bisection in about n / 4096 entries.
    """

    def __init__(self) -> None:
        self._buckets: list[array[int]] = [array("q") for _ in range(_BUCKETS)]
        self._count = 0
        self.additions = 0  # key_ids added one by one so far: a reader can tell whether any came in meanwhile

    def __contains__(self, key_id: str) -> bool:
        fingerprint = hash(key_id)
        bucket = self._buckets[fingerprint & _MASK]
        at = bisect_left(bucket, fingerprint)
        return at < len(bucket) and bucket[at] == fingerprint

    def __len__(self) -> int:
        """How many fingerprints are held."""
        return self._count

    def add(self, key_id: str) -> None:
        fingerprint = hash(key_id)
        bucket = self._buckets[fingerprint & _MASK]
        at = bisect_left(bucket, fingerprint)
        if at == len(bucket) or bucket[at] != fingerprint:
            bucket.insert(at, fingerprint)
            self._count += 1
            self.additions += 1

    @classmethod
    async def build(cls, batches: AsyncIterator[Iterable[str]]) -> KeyIdIndex:
        """An index of every key_id in `batches`, built a batch and a few buckets at a time (the loop runs between)."""
        index = cls()
        buckets = index._buckets
        async for batch in batches:
            for key_id in batch:
                fingerprint = hash(key_id)
                buckets[fingerprint & _MASK].append(fingerprint)
        for number, bucket in enumerate(buckets):
            # Sorted into an array of exactly its size; two key_ids with one fingerprint are kept once.
            buckets[number] = array("q", sorted(set(bucket)))
            index._count += len(buckets[number])
            if number % 64 == 63:
                await asyncio.sleep(0)
        return index

    def nbytes(self) -> int:
        """Bytes held by the fingerprints themselves (the arrays' headers add about 80 bytes per bucket)."""
        return sum(bucket.buffer_info()[1] for bucket in self._buckets) * 8


class KnownKeyIds:
    """The index kept current, and the decision whether a key_id missing from it may be refused without the database."""

    def __init__(
        self,
        engine: AsyncEngine,
        invalidator: Invalidator,
        incidents: DatabaseIncidents,
        *,
        enabled: bool,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        """`enabled`: creations are announced and Redis is configured; otherwise nothing is loaded or refused."""
        self._engine = engine
        self._invalidator = invalidator
        self._incidents = incidents
        self._enabled = enabled
        self._refresh_seconds = refresh_seconds
        self._index: KeyIdIndex | None = None  # None: not loaded under the current subscription
        self._epoch = 0  # the subscription the index was loaded under
        self._announced_during_load: list[str] | None = None
        self._marks: deque[int] = deque(maxlen=2)  # the highest key id before each of the last two reads
        self._task: asyncio.Task[None] | None = None

    @property
    def index(self) -> KeyIdIndex | None:
        return self._index

    async def absent(self, key_id: str) -> bool:
        """True when no key with `key_id` was committed before this call, decided without the database. False means
        "not known to be absent": the caller reads the database."""
        index = self._index
        if index is None or key_id in index or not self._current():
            return False
        additions = index.additions
        if not await self._invalidator.caught_up():
            return False
        # The barrier may have applied this very key's announcement (looked up again only if any came in), or a new
        # subscription may have replaced the index. A subscription lost meanwhile changes nothing: the barrier has
        # already shown that every announcement made before this call is here.
        return self._index is index and (index.additions == additions or key_id not in index)

    def add(self, key_id: str) -> None:
        """A key with this key_id exists: every announcement (a creation, a change) says so."""
        if self._index is not None:
            self._index.add(key_id)
        if self._announced_during_load is not None:
            self._announced_during_load.append(key_id)

    def resync(self) -> None:
        """A subscription was confirmed: announcements may have been missed before it, so the index is loaded anew."""
        if not self._enabled:
            return
        self._index = None
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._keep_current(self._invalidator.epoch))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _current(self) -> bool:
        return self._epoch == self._invalidator.epoch and self._invalidator.subscribed.is_set()

    async def _keep_current(self, epoch: int) -> None:
        loaded = False
        while True:
            if loaded:
                await self._attempt(self.refresh())
            else:
                loaded = await self._attempt(self._load(epoch))
            await asyncio.sleep(self._refresh_seconds if loaded else RETRY_SECONDS)

    async def _attempt(self, step: Awaitable[None]) -> bool:
        try:
            await step
        except Exception as error:
            if not self._incidents.report(error):
                logger.exception("could not read the key_ids; unknown keys are looked up in the database meanwhile")
            return False
        return True

    async def _load(self, epoch: int) -> None:
        """Every key_id, read after the subscription was confirmed: what is committed later is announced to it."""
        announced: list[str] = []
        self._announced_during_load = announced
        try:
            highest = await self._highest_id()
            index = await KeyIdIndex.build(self._key_ids())
            for key_id in announced:
                index.add(key_id)
        finally:
            if self._announced_during_load is announced:  # not yet taken over by a load that replaced this one
                self._announced_during_load = None
        self._marks.clear()
        self._marks.append(highest)
        self._index, self._epoch = index, epoch

    async def refresh(self) -> None:
        """Add the keys with ids above the highest seen before the read before last (every `refresh_seconds`): a key
        whose announcement was lost is found here, and so is one whose transaction took its id before that read but
        committed after it."""
        index = self._index
        if index is None:
            return
        highest = await self._highest_id()
        async for batch in self._key_ids(above=self._marks[0]):
            for key_id in batch:
                index.add(key_id)
        self._marks.append(highest)

    async def _highest_id(self) -> int:
        async with self._engine.connect() as connection:
            return int(await connection.scalar(select(func.coalesce(func.max(ApiKey.id), 0))) or 0)

    def _key_ids(self, *, above: int = 0) -> AsyncIterator[list[str]]:
        return stream_key_ids(self._engine, above=above)


async def stream_key_ids(engine: AsyncEngine, *, above: int = 0) -> AsyncIterator[list[str]]:
    """The key_ids of the keys with ids above `above`, in batches of LOAD_BATCH, streamed from the database."""
    query = select(ApiKey.key_id).where(ApiKey.id > above).execution_options(yield_per=LOAD_BATCH)
    async with engine.connect() as connection:
        result = await connection.stream_scalars(query)
        async for batch in result.partitions():
            yield list(batch)
