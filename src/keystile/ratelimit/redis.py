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

Redis Cluster: a script may only touch keys of one hash slot, so on a cluster a batch is split by the slot of its
requests and sent as one script call per slot, concurrently. A request that passes several counters together (a key
and its identity) needs them in one slot: their bucket names share a hash tag (`{i7}key:5` and `{i7}identity`, made
by keys/records.py), which a single Redis ignores. Whether the URL names a cluster node is asked of the server
(`INFO cluster`) before the first batch, so `KEYSTILE_REDIS_URL` may name any node of a cluster and needs no other
setting.

Exhausted windows are remembered: once this process has seen a window's counter at its limit, later requests on that
bucket, window and limit are refused here without a round trip. This is exact because a counter never goes down
within its window but by units handed back from leases (below), which the leases' bound counts; a different limit or
window length (a PATCH) is a different entry, so a raised limit goes to Redis at once. A flood of a limited key
therefore costs Redis one call per process and window.

Leases, far below the limit: a request on a counter that is far from its limit takes, in its own script call, a few
units more than its cost (`lease_size`), and this process admits its next requests on that counter from them with no
round trip. The script grants a lease only while the counter, lease included, stays at or below half the limit, so
from half the limit on every decision is made in Redis, one request at a time, exactly as without leases. Units are
never admitted twice (a lease is units added to the shared counter), so no window ever admits more than its limit;
the cost is the other way: a leased unit not yet used counts as used for everybody else. While this process waits
for a lease, its other requests on that counter wait for the same answer rather than make round trips of their own,
so a burst is served from the lease it asked for and leaves none of it unused; once Redis refuses a lease (the
counter is past half), none is asked for again in that window. Unused units are handed back
(a DECRBY in a later batch) when their lease has not been used for `LEASE_IDLE_SECONDS`, when the limit changes, and
at shutdown. Hence the exactness bound (docs/RATE_LIMITS.md, "Leases"): with P processes, a window admits between
limit - P x lease_size(limit) and limit, and fewer than the limit only while some process holds a lease it is not
using. Each admitted request sees a distinct remaining count, until units are handed back: those are handed out
again, so a remaining value can then repeat (never the admitted total). Limits below 128 are never leased (a lease would
be under two units), and requests passing several counters together (a key and its identity) are never leased.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from keystile.ratelimit.base import Counter, Decision, LimiterUnavailableError, Window, decide_together

# A batch of requests, each passing one or more counters together (a key's limit and its identity's). ARGV holds, per
# request: how many counters it has (n), its cost, the lease it asks for, then each counter's limit and expiry in ms;
# KEYS holds the counters in the same order. The cost is added to every counter of a request or, when any would go
# over its limit, to none. A lease (n = 1 only) is added on top of the cost when the counter stays at or below half
# its limit with it. A negative cost hands back unused leased units to a window that still exists. Returns each
# counter's value before its request. A counter expires a little after its window ends, so Redis memory holds only
# live windows.
_FIXED_WINDOWS = """
local used_before = {}
local k = 0
local a = 1
while a <= #ARGV do
    local n = tonumber(ARGV[a])
    local cost = tonumber(ARGV[a + 1])
    local lease = tonumber(ARGV[a + 2])
    if cost < 0 then
        for j = 1, n do
            used_before[k + j] = 0
            if redis.call('EXISTS', KEYS[k + j]) == 1 then
                redis.call('DECRBY', KEYS[k + j], -cost)
            end
        end
    else
        local fits = cost > 0
        for j = 1, n do
            local used = tonumber(redis.call('GET', KEYS[k + j]) or '0')
            used_before[k + j] = used
            if used + cost > tonumber(ARGV[a + 1 + 2 * j]) then
                fits = false
            end
        end
        if fits then
            local take = cost
            if n == 1 and lease > 0 and 2 * (used_before[k + 1] + cost + lease) <= tonumber(ARGV[a + 3]) then
                take = cost + lease
            end
            for j = 1, n do
                redis.call('INCRBY', KEYS[k + j], take)
                redis.call('PEXPIRE', KEYS[k + j], ARGV[a + 2 + 2 * j])
            end
        end
    end
    k = k + n
    a = a + 3 + 2 * n
end
return used_before
"""

KEY_PREFIX = "keystile:rl:"

# Short timeouts: when Redis is gone a request must fail over to RATE_LIMIT_FAILURE quickly, not hang.
TIMEOUT_SECONDS = 0.5
# On a cluster, one retry after a connection error (redis-py refreshes the slot map in between, which follows a
# failover); redis-py's default of ten with backoff would hold a request for seconds while a shard is down.
_CLUSTER_RETRY = Retry(NoBackoff(), 1)

# A lease is this fraction of the limit, at most MAX_LEASE units: the most one process can hold unused.
LEASE_DIVISOR = 64
MAX_LEASE = 64
# A lease unused for this long is handed back with the next batch (or at shutdown).
LEASE_IDLE_SECONDS = 1.0

# Past this many remembered exhausted windows, those that have ended are swept out (bucket names can be chosen by
# clients: login emails, addresses).
SWEEP_THRESHOLD = 10_000

Client = redis.Redis | RedisCluster
# What a failed round trip raises; RedisClusterException (no reachable node, slot not covered) is not a RedisError.
_UNAVAILABLE = (RedisError, RedisClusterException, OSError)


def lease_size(limit: int) -> int:
    """The units a request asks for beyond its cost while its counter is far from `limit`; 0 for no lease."""
    units = min(MAX_LEASE, limit // LEASE_DIVISOR)
    return units if units >= 2 else 0


class _Request(NamedTuple):
    """One decision waiting for its batch: its counters, the script's arguments, and where the answer goes."""

    keys: tuple[str, ...]
    args: tuple[int, ...]  # len(keys), cost, lease, then each counter's limit and expiry in ms
    used_before: asyncio.Future[list[int]]


class _Lease:
    """Units of one window's counter that this process added in Redis and has not used yet."""

    __slots__ = ("key", "left", "limit", "refused", "room", "start_ms", "used_at")

    def __init__(self, key: str, start_ms: int, limit: int) -> None:
        self.key = key  # the counter's Redis key, window included
        self.start_ms = start_ms
        self.limit = limit
        self.left = 0
        self.room = 0  # the limit minus the counter's value just after this process's last lease
        self.used_at = 0.0  # monotonic
        self.refused = False  # Redis refused a lease: the counter is past half the limit for the rest of the window


class _Exhausted(NamedTuple):
    """A window this process has seen used up, for one limit: refusals need no round trip until it ends."""

    start_ms: int
    seconds: int
    limit: int


class RedisRateLimiter:
    def __init__(
        self, client: Client, *, url: str | None = None, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        """`url`, when given, is where `client` connects: before the first batch the server is asked whether it is a
        cluster node, and if so `client` is replaced by a cluster client for the same URL."""
        self._use(client)
        self._url_to_probe = url
        self._probing = asyncio.Lock()
        self._waiting: list[_Request] = []
        self._sending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self._exhausted: dict[str, _Exhausted] = {}
        self._seen: dict[tuple[str, int], int] = {}  # (bucket, window start) -> count, for counters passed together
        self._next_sweep_size = SWEEP_THRESHOLD
        self._leases: dict[str, _Lease] = {}  # by bucket
        # Buckets with a lease asked for and not yet answered, one at a time; set once answered.
        self._leasing: dict[str, asyncio.Event] = {}
        self._returns: list[tuple[str, int]] = []  # (Redis key, units) to hand back with the next batch
        self._next_idle_check = 0.0
        self._monotonic = monotonic

    @classmethod
    def from_url(cls, url: str) -> RedisRateLimiter:
        return cls(
            redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS), url=url
        )

    async def hit(self, bucket: str, *, limit: int, window_seconds: int, cost: int, now: datetime) -> Decision:
        window = Window.at(now, window_seconds)
        exhausted = _Exhausted(window.start_ms, window.seconds, limit)
        while True:
            lease = self._current_lease(bucket, window, limit)
            if lease is not None and cost and lease.left >= cost:  # before the exhausted check: this process's own
                lease.left -= cost
                lease.used_at = self._monotonic()
                return Decision(True, limit, window.seconds, lease.room + lease.left, window.reset_seconds)
            if self._exhausted.get(bucket) == exhausted:
                return window.decide(used_before=limit, limit=limit, cost=cost)[0]
            asked = self._leasing.get(bucket)
            if asked is None or not cost:
                break
            # This process is asking Redis for a lease on this counter: the answer may well cover this request too,
            # so it waits for that rather than make a round trip of its own (and a burst leaves no lease unused).
            await asked.wait()
        key = f"{KEY_PREFIX}{bucket}:{window.start_ms}"
        expiry_ms = window.end_ms - window.now_ms + 1000
        wanted = lease_size(limit) if cost and (lease is None or not lease.refused) else 0
        if not wanted:
            used = (await self._ask((key,), (1, cost, 0, limit, expiry_ms)))[0]
        else:
            answered = self._leasing[bucket] = asyncio.Event()
            try:
                used = (await self._ask((key,), (1, cost, wanted, limit, expiry_ms)))[0]
            finally:
                del self._leasing[bucket]
                answered.set()
            if 2 * (used + cost + wanted) <= limit:  # the script's own rule: the lease was granted
                return self._granted(bucket, key, window, limit, used + cost + wanted, wanted)
            # Past half the limit: no lease until the window ends (a counter only grows), so requests are not held
            # back one round trip at a time asking for leases that would be refused.
            self._lease_of(bucket, key, window, limit).refused = True
        decision, used_after = window.decide(used_before=used, limit=limit, cost=cost)
        if used_after >= limit:
            self._remember_exhausted(bucket, exhausted)
        return decision

    def _current_lease(self, bucket: str, window: Window, limit: int) -> _Lease | None:
        """This process's lease on the bucket's current window and limit; one of another window or limit ends here."""
        lease = self._leases.get(bucket)
        if lease is not None and (lease.start_ms != window.start_ms or lease.limit != limit):
            self._end_lease(bucket, lease, window)
            return None
        return lease

    def _lease_of(self, bucket: str, key: str, window: Window, limit: int) -> _Lease:
        lease = self._current_lease(bucket, window, limit)
        if lease is None:
            lease = self._leases[bucket] = _Lease(key, window.start_ms, limit)
        return lease

    def _granted(self, bucket: str, key: str, window: Window, limit: int, used_after: int, units: int) -> Decision:
        lease = self._lease_of(bucket, key, window, limit)
        lease.left += units
        lease.room = limit - used_after
        lease.used_at = self._monotonic()
        return Decision(True, limit, window.seconds, lease.room + lease.left, window.reset_seconds)

    def _end_lease(self, bucket: str, lease: _Lease, window: Window) -> None:
        """Forget a lease of another window or limit, handing its units back if its window is still the current one
        (a changed limit); the units of a window that has ended expire with its counter."""
        del self._leases[bucket]
        if lease.left and lease.start_ms == window.start_ms:
            self._returns.append((lease.key, lease.left))

    async def hit_all(self, counters: list[Counter], *, cost: int, now: datetime) -> list[Decision]:
        windows = [Window.at(now, counter.window_seconds) for counter in counters]
        remembered = [_Exhausted(w.start_ms, w.seconds, c.limit) for c, w in zip(counters, windows, strict=True)]
        if cost and any(self._exhausted.get(c.bucket) == e for c, e in zip(counters, remembered, strict=True)):
            # One counter is used up: refused here. The others show what this process last saw of them.
            used = [self._seen.get((c.bucket, w.start_ms), 0) for c, w in zip(counters, windows, strict=True)]
            used = [
                c.limit if self._exhausted.get(c.bucket) == e else u
                for c, e, u in zip(counters, remembered, used, strict=True)
            ]
            return decide_together(windows, counters, used, cost)
        keys = tuple(f"{KEY_PREFIX}{c.bucket}:{w.start_ms}" for c, w in zip(counters, windows, strict=True))
        args = [len(counters), cost, 0]
        for counter, window in zip(counters, windows, strict=True):
            args += (counter.limit, window.end_ms - window.now_ms + 1000)
        used = await self._ask(keys, tuple(args))
        decisions = decide_together(windows, counters, used, cost)
        admitted = all(d.allowed for d in decisions)
        for counter, window, exhausted, used_before in zip(counters, windows, remembered, used, strict=True):
            used_after = used_before + cost if admitted else used_before
            self._seen[(counter.bucket, window.start_ms)] = used_after
            if used_after >= counter.limit:
                self._remember_exhausted(counter.bucket, exhausted)
        if len(self._seen) >= SWEEP_THRESHOLD:
            self._seen.clear()  # only shown in refusals' headers: losing it costs nothing but accuracy there
        return decisions

    async def _ask(self, keys: tuple[str, ...], args: tuple[int, ...]) -> list[int]:
        """The counters' values before this request, from the batch it joins."""
        loop = asyncio.get_running_loop()
        request = _Request(keys, args, loop.create_future())
        if not self._waiting:
            # The task first runs on the loop's next turn: every decision asked for before then joins this batch.
            task = loop.create_task(self._send_waiting())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._waiting.append(request)
        try:
            return await request.used_before
        except _UNAVAILABLE as error:
            raise LimiterUnavailableError(str(error)) from error

    def _remember_exhausted(self, bucket: str, window: _Exhausted) -> None:
        self._exhausted[bucket] = window
        if len(self._exhausted) >= self._next_sweep_size:
            now_ms = window.start_ms  # a window that ended before this one started is over
            self._exhausted = {b: w for b, w in self._exhausted.items() if w.start_ms + w.seconds * 1000 > now_ms}
            # Sweep again only once the table has doubled over what survived: amortized O(1) per remembered window.
            self._next_sweep_size = max(SWEEP_THRESHOLD, 2 * len(self._exhausted))

    async def _send_waiting(self) -> None:
        self._return_idle_leases()
        # Hand-backs first: a decision in the same batch (on a lowered limit, say) sees the counter without them.
        batch, self._waiting = self._take_returns() + self._waiting, []
        try:
            await self._probe_for_cluster()
            await asyncio.gather(*(self._send(group) for group in self._groups(batch)))
        except Exception as error:  # the probe failed; each group handles its own failure
            _fail(batch, error)
        except asyncio.CancelledError:  # shutdown: no waiter may be left hanging
            _fail(batch, RedisError("rate limit decision cancelled"))
            raise

    def _return_idle_leases(self) -> None:
        """At most once per LEASE_IDLE_SECONDS, queue the units of leases unused for that long to be handed back."""
        now = self._monotonic()
        if now < self._next_idle_check or not self._leases:
            return
        self._next_idle_check = now + LEASE_IDLE_SECONDS
        idle = [bucket for bucket, lease in self._leases.items() if now - lease.used_at >= LEASE_IDLE_SECONDS]
        for bucket in idle:
            lease = self._leases.pop(bucket)
            if lease.left:
                self._returns.append((lease.key, lease.left))

    def _take_returns(self) -> list[_Request]:
        """The queued hand-backs as requests of a batch; nobody awaits their answer."""
        loop = asyncio.get_running_loop()
        requests = []
        for key, units in self._returns:
            answer: asyncio.Future[list[int]] = loop.create_future()
            answer.add_done_callback(_ignore_answer)
            requests.append(_Request((key,), (1, -units, 0, 0, 0), answer))
        self._returns = []
        return requests

    def _groups(self, batch: list[_Request]) -> list[list[_Request]]:
        """The batch as script calls: all of it on a single Redis, one call per hash slot on a cluster."""
        if not isinstance(self._client, RedisCluster):
            return [batch]
        by_slot: defaultdict[int, list[_Request]] = defaultdict(list)
        for request in batch:
            by_slot[key_slot(request.keys[0].encode())].append(request)
        return list(by_slot.values())

    async def _send(self, group: list[_Request]) -> None:
        try:
            replies = await self._script(
                keys=[k for r in group for k in r.keys], args=[a for r in group for a in r.args]
            )
        except Exception as error:
            _fail(group, error)
            return
        start = 0
        for request in group:
            end = start + len(request.keys)
            used = [int(value) for value in replies[start:end]]
            if not request.used_before.done():
                request.used_before.set_result(used)
            elif request.args[2] and 2 * (used[0] + request.args[1] + request.args[2]) <= request.args[3]:
                # Its waiter was cancelled (the client went away) after Redis granted a lease nobody will hold.
                self._returns.append((request.keys[0], request.args[2]))
            start = end

    async def _probe_for_cluster(self) -> None:
        """Once, before the first batch: switch to a cluster client if the URL names a cluster node. A failed probe
        fails its batch and is tried again with the next one."""
        if self._url_to_probe is None:
            return
        async with self._probing:
            url = self._url_to_probe
            if url is None:  # another batch probed while this one waited
                return
            try:
                cluster = bool((await self._client.info("cluster")).get("cluster_enabled"))
            except ResponseError:  # INFO is not allowed for this user: only a cluster node would need it
                cluster = False
            if cluster:
                client = RedisCluster.from_url(
                    url, retry=_CLUSTER_RETRY, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
                )
                try:
                    # The slot map now, before concurrent use: redis-py's lazy first initialization, raced by the
                    # concurrent calls of one batch, closes connections under some of them (redis-py 8.1).
                    await client.initialize()
                except BaseException:
                    await client.aclose()
                    raise
                single = self._client
                self._use(client)
                await single.aclose()
            self._url_to_probe = None

    def _use(self, client: Client) -> None:
        self._client = client
        self._script = client.register_script(_FIXED_WINDOWS)  # EVALSHA; loads the script again after a flush

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except _UNAVAILABLE:
            return False

    async def close(self) -> None:
        """Hand back every lease's unused units (best effort: if Redis is gone they expire with their window), then
        close the connections."""
        await asyncio.gather(*self._sending, return_exceptions=True)  # leases granted in flight are held first
        self._returns += [(lease.key, lease.left) for lease in self._leases.values() if lease.left]
        self._leases.clear()
        if self._returns:  # each group's failure is its own (`_send`): nothing raises here
            await asyncio.gather(*(self._send(group) for group in self._groups(self._take_returns())))
        await self._client.aclose()


def _ignore_answer(answer: asyncio.Future[list[int]]) -> None:
    """A hand-back's answer is not needed; its failure is read here so that asyncio does not log it."""
    if not answer.cancelled():
        answer.exception()


def _fail(batch: list[_Request], error: Exception) -> None:
    for request in batch:
        if not request.used_before.done():
            request.used_before.set_exception(error)
