"""The delivery worker: turns outbox events into deliveries and makes each due attempt, in every serving process.

One loop per process (started by `Keystile`), woken after a commit that emitted events here and polling otherwise
(`KEYSTILE_WEBHOOK_POLL_SECONDS`), for events written by other processes, retries that came due and leases that ran
out. Each round is one transaction (step 4 happens in the round after the attempt):

0. Record the results of the attempts made since the last round (`recording.write`).
1. Fan-out: unhandled outbox events become one delivery per enabled endpoint of the owner subscribed to the type
   (`webhook.test` only to its own endpoint). PostgreSQL hands each event to one process (`FOR UPDATE SKIP LOCKED`);
   the unique (event, endpoint) pair makes a repeated fan-out harmless anyway.
2. Claim: due deliveries are chosen skipping rows another process has locked (`FOR UPDATE SKIP LOCKED` on
   PostgreSQL; SQLite runs the round under its single writer lock) and taken by moving `next_attempt_at` to the end
   of a lease and bumping `claims`, in one UPDATE that checks again that they are due. A process that dies mid-send
   leaves the delivery due again when the lease ends: delivered at least once, never lost. A result is written only
   while `claims` is still the claim's own.
3. Send, at most `KEYSTILE_WEBHOOK_CONCURRENCY` at once and `KEYSTILE_WEBHOOK_ENDPOINT_CONCURRENCY` per endpoint, so a
   slow receiver holds a few slots, never all. After a failed attempt its endpoint backs off in this process
   (1 s, 2 s, 4 s, ... up to 60 s, reset by a success): a dead receiver is probed, not hammered, and the other
   receivers' deliveries go on.
4. A finished attempt wakes the next round, which records it with every other result that came in meanwhile: on
   failure the next attempt after `KEYSTILE_WEBHOOK_RETRY_DELAYS`, or the delivery failed after the last one; the
   endpoint disabled once it has failed for `KEYSTILE_WEBHOOK_DISABLE_AFTER_DAYS` days. A result waiting for its
   round still holds its slot. Writing results one transaction each bounded a process at about 50 deliveries/s
   (docs/PERFORMANCE.md, "Webhook delivery"). If the round's transaction fails, its results are written again one
   transaction each, so one bad row (a delivery deleted with its endpoint meanwhile) does not take the others with it;
   a result that still cannot be written is re-delivered when its lease ends.

The worker uses its own engine (its own pool): delivery never takes a connection a request is waiting for, so the
verification path's cost and latency do not depend on webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keystile.clock import Clock
from keystile.db import is_database_unavailable
from keystile.events import recording
from keystile.events.delivery import AttemptResult, attempt, new_client
from keystile.events.models import DeliveryState, OutboxEvent, WebhookDelivery
from keystile.events.outbox import insert_ignoring_conflicts
from keystile.events.recording import Finished
from keystile.events.routing import receives
from keystile.webhooks.models import WebhookEndpoint
from keystile.webhooks.secrets import SecretBox

logger = logging.getLogger(__name__)

FAN_OUT_BATCH = 500
ENDPOINT_BACKOFF_MAX_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How deliveries are made; from settings (README, "Settings")."""

    retry_delays: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000)
    timeout_seconds: float = 10.0
    lease_seconds: float = 60.0
    concurrency: int = 32
    per_endpoint: int = 8
    poll_seconds: float = 1.0
    disable_after_days: int = 5
    allow_private: bool = False

    @property
    def record(self) -> recording.RecordPolicy:
        return recording.RecordPolicy(retry_delays=self.retry_delays, disable_after_days=self.disable_after_days)


@dataclass(frozen=True, slots=True)
class _Job:
    delivery_id: int
    endpoint_id: int
    attempt: int
    claim: int
    message_id: str
    body: str
    url: str
    sealed_secret: str


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        secrets: SecretBox,
        clock: Clock,
        policy: DeliveryPolicy,
    ) -> None:
        self._sessions = sessions
        self._secrets = secrets
        self._clock = clock
        self.policy = policy
        self._wakeup = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], _Job] = {}
        self._unrecorded: list[Finished] = []  # attempts made, for the next round to record
        self._endpoint_failures: Counter[int] = Counter()
        self._endpoint_blocked_until: dict[int, datetime] = {}
        self._client: httpx.AsyncClient | None = None
        self._failing = False
        self._database_errors = 0  # in a row: one alone is a dropped connection, not an outage (_report)

    def __repr__(self) -> str:
        return f"Dispatcher(in_flight={len(self._in_flight)}, unrecorded={len(self._unrecorded)})"

    def wake(self) -> None:
        """Run a round now (a commit here emitted events, a slot came free, a test moved the clock)."""
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            self._wakeup.clear()
            await self.run_once()
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for loses a cancellation that arrives as the
            # event is set, and this loop would then outlive its shutdown (a hang in Keystile.__aexit__).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.policy.poll_seconds):
                    await self._wakeup.wait()

    async def run_once(self) -> int:
        """One round, one transaction: record the attempts made since the last round, fan out new events, claim the
        due deliveries there is room for; then start those. How many were started."""
        finished, self._unrecorded = self._unrecorded, []
        committed = False
        try:
            async with self._sessions() as session:
                now = self._clock()
                await recording.write(session, finished, now=now, policy=self.policy.record)
                await self._fan_out(session, now)
                jobs = await self._claim(session, now)
                await session.commit()
                committed = True
        except Exception as error:
            await self._record_one_by_one(finished)
            self._report(error)
            return 0
        except BaseException:
            # Cancelled (shutdown): `close` records them. Cancelled while the COMMIT was on its way, they may be
            # written twice: one more attempt row, the delivery itself unchanged (its claim check).
            if not committed:
                self._unrecorded[:0] = finished
            raise
        self._recovered()
        for job in jobs:
            self._start(job)
        return len(jobs)

    async def settle(self) -> None:
        """Wait until every attempt in flight has been made (its result is recorded by the next round)."""
        await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _record_one_by_one(self, finished: Sequence[Finished]) -> None:
        for item in finished:
            try:
                async with self._sessions() as session:
                    await recording.write(session, [item], now=self._clock(), policy=self.policy.record)
                    await session.commit()
            except Exception as error:  # the lease runs out and the delivery is attempted again: nothing lost
                self._report(error)

    async def _fan_out(self, session: AsyncSession, now: datetime) -> int:
        """Turn unhandled outbox events into deliveries; how many events were handled."""
        pending = (
            await session.execute(
                select(OutboxEvent.id, OutboxEvent.owner_id, OutboxEvent.type, OutboxEvent.endpoint_id)
                .where(OutboxEvent.fanned_out.is_(False))
                .order_by(OutboxEvent.id)
                .limit(FAN_OUT_BATCH)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not pending:
            return 0
        endpoints = (
            await session.execute(
                select(WebhookEndpoint.id, WebhookEndpoint.user_id, WebhookEndpoint.events).where(
                    WebhookEndpoint.user_id.in_({event.owner_id for event in pending}),
                    WebhookEndpoint.enabled.is_(True),
                )
            )
        ).all()
        deliveries = [
            {
                "event_pk": event.id,
                "endpoint_id": endpoint.id,
                "state": DeliveryState.PENDING,
                "attempts": 0,
                "claims": 0,
                "next_attempt_at": now,
            }
            for event in pending
            for endpoint in endpoints
            if receives(endpoint, event)
        ]
        if deliveries:
            await session.execute(insert_ignoring_conflicts(session, WebhookDelivery.__table__), deliveries)
        await session.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_([event.id for event in pending])).values(fanned_out=True)
        )
        return len(pending)

    async def _claim(self, session: AsyncSession, now: datetime) -> list[_Job]:
        # A slot is held from the claim until the attempt's result is recorded (by this round, for those it took).
        busy = Counter(job.endpoint_id for job in self._in_flight.values())
        busy.update(item.endpoint_id for item in self._unrecorded)
        free = self.policy.concurrency - busy.total()
        if free <= 0:
            return []
        excluded = {endpoint for endpoint, count in busy.items() if count >= self.policy.per_endpoint}
        excluded |= {endpoint for endpoint, until in self._endpoint_blocked_until.items() if until > now}
        # Never one this process still holds, even if its lease ran out (a clock that jumped): its result is coming.
        held = [job.delivery_id for job in self._in_flight.values()] + [item.delivery_id for item in self._unrecorded]
        due = (
            WebhookDelivery.state == DeliveryState.PENDING,
            WebhookDelivery.next_attempt_at <= now,
            WebhookDelivery.id.not_in(held),
        )
        lease_end = now + timedelta(seconds=self.policy.lease_seconds)
        # The endpoints with due deliveries, longest waiting first, then a few deliveries of each.
        endpoint_ids = list(
            await session.scalars(
                select(WebhookDelivery.endpoint_id)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(*due, WebhookEndpoint.enabled.is_(True), WebhookDelivery.endpoint_id.not_in(excluded))
                .group_by(WebhookDelivery.endpoint_id)
                .order_by(func.min(WebhookDelivery.next_attempt_at))
                .limit(free)
            )
        )
        claimed: list[Any] = []
        for endpoint_id in endpoint_ids:
            room = min(self.policy.per_endpoint - busy[endpoint_id], free - len(claimed))
            if room <= 0:
                break
            # Chosen by a statement of its own, not a subquery of the UPDATE: PostgreSQL may run such a subquery
            # again for each row, and a re-run skips the rows this UPDATE has just claimed (its own row locks) and
            # picks the next ones, so the LIMIT held for nothing (a whole fan-out batch, 500, started at once).
            chosen = list(
                await session.scalars(
                    select(WebhookDelivery.id)
                    .where(*due, WebhookDelivery.endpoint_id == endpoint_id)
                    .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                    .limit(room)
                    .with_for_update(skip_locked=True)
                )
            )
            if not chosen:
                continue
            claim = (
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(chosen), *due)
                .values(
                    next_attempt_at=lease_end,
                    claims=WebhookDelivery.claims + 1,
                    attempts=WebhookDelivery.attempts + 1,
                )
                .returning(WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.claims)
                .execution_options(synchronize_session=False)
            )
            claimed.extend((await session.execute(claim)).all())
        return await self._jobs(session, claimed)

    async def _jobs(self, session: AsyncSession, claimed: Sequence[Any]) -> list[_Job]:
        if not claimed:
            return []
        by_id = {row.id: row for row in claimed}
        details = await session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.endpoint_id,
                OutboxEvent.event_id,
                OutboxEvent.body,
                WebhookEndpoint.url,
                WebhookEndpoint.sealed_secret,
            )
            .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_pk)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.id.in_(by_id))
            .order_by(WebhookDelivery.id)
        )
        return [
            _Job(
                delivery_id=row.id,
                endpoint_id=row.endpoint_id,
                attempt=by_id[row.id].attempts,
                claim=by_id[row.id].claims,
                message_id=row.event_id,
                body=row.body,
                url=row.url,
                sealed_secret=row.sealed_secret,
            )
            for row in details
        ]

    def _start(self, job: _Job) -> None:
        task = asyncio.create_task(self._deliver(job))
        self._in_flight[task] = job
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        del self._in_flight[task]
        self._wakeup.set()  # a result to record, or a slot came free

    async def _deliver(self, job: _Job) -> None:
        if self._client is None:
            self._client = new_client(max_connections=self.policy.concurrency)
        try:
            result = await attempt(
                self._client,
                url=job.url,
                secret=self._secrets.open(job.sealed_secret),
                message_id=job.message_id,
                body=job.body.encode(),
                allow_private=self.policy.allow_private,
                timeout_seconds=self.policy.timeout_seconds,
            )
            self._note_endpoint(job.endpoint_id, result)
            self._unrecorded.append(Finished(job.delivery_id, job.endpoint_id, job.attempt, job.claim, result))
        except Exception as error:  # the lease runs out and the delivery is attempted again: nothing lost
            self._report(error)

    def _note_endpoint(self, endpoint_id: int, result: AttemptResult) -> None:
        if result.delivered:
            self._endpoint_failures.pop(endpoint_id, None)
            self._endpoint_blocked_until.pop(endpoint_id, None)
            return
        self._endpoint_failures[endpoint_id] += 1
        backoff = min(2.0 ** (self._endpoint_failures[endpoint_id] - 1), ENDPOINT_BACKOFF_MAX_SECONDS)
        self._endpoint_blocked_until[endpoint_id] = self._clock() + timedelta(seconds=backoff)

    def _report(self, error: BaseException) -> None:
        """A failed round or record, logged once until a round succeeds again (no line per poll). A database error is
        told only when the next round fails too: one dropped connection (a restart, a failover) is replaced by the
        pool's pre-ping at the next checkout and is no outage."""
        if self._failing:
            return
        if is_database_unavailable(error):
            self._database_errors += 1
            if self._database_errors < 2:
                return
            self._failing = True
            logger.warning("webhook delivery waits for the database: %s", type(error).__name__)
            return
        self._failing = True
        logger.error("webhook delivery failed; retrying each poll", exc_info=error)

    def _recovered(self) -> None:
        self._database_errors = 0
        if self._failing:
            self._failing = False
            logger.info("webhook delivery resumed")

    async def close(self) -> None:
        """Let attempts in flight finish for a moment and record every result made; hand back the claims of the
        attempts that do not finish, so another process (or this one, restarted) retries them at once instead of
        after the lease. Called once the run loop has stopped."""
        tasks = list(self._in_flight)
        abandoned: list[_Job] = []
        if tasks:
            _done, unfinished = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_SECONDS)
            abandoned = [self._in_flight[task] for task in unfinished if task in self._in_flight]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        await self._record_unrecorded()
        await self._release(abandoned)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _record_unrecorded(self) -> None:
        finished, self._unrecorded = self._unrecorded, []
        if not finished:
            return
        try:
            async with self._sessions() as session:
                await recording.write(session, finished, now=self._clock(), policy=self.policy.record)
                await session.commit()
        except Exception:
            await self._record_one_by_one(finished)

    async def _release(self, jobs: Sequence[_Job]) -> None:
        if not jobs:
            return
        try:
            async with self._sessions() as session:
                for job in jobs:
                    await session.execute(
                        update(WebhookDelivery)
                        .where(WebhookDelivery.id == job.delivery_id, WebhookDelivery.claims == job.claim)
                        .values(next_attempt_at=self._clock(), attempts=WebhookDelivery.attempts - 1)
                    )
                await session.commit()
        except Exception as error:  # the leases end by themselves
            self._report(error)
