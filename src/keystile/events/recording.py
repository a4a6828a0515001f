"""Writing the results of attempts: every result a dispatcher round collected, in that round's one transaction.

Per attempt the record is what it always was: a `webhook_attempts` row; the delivery delivered, failed after the last
retry, or due again after `KEYSTILE_WEBHOOK_RETRY_DELAYS` (only while its `claims` is still the claim's own, so a
process whose lease ran out cannot write over the claim that took it over); its endpoint's `failing_since` cleared
by a success or started by a failure, and the endpoint disabled once it has failed for
`KEYSTILE_WEBHOOK_DISABLE_AFTER_DAYS`. Batched, that is a fixed number of statements whatever the number of results:
one multi-row INSERT, one executemany UPDATE of the deliveries, one UPDATE of the endpoints and, when some failed,
one UPDATE that disables.

An endpoint with several results in a batch ends as its last one says (the order in which they finished): a success
after failures clears `failing_since`, a failure after a success starts it again now. Results of one batch finished
within a round of each other, so this is the order the one-at-a-time writes would have seen, give or take a race
between concurrent attempts that had no order anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, func, insert, literal, null, update
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.events.delivery import AttemptResult
from keystile.events.models import DeliveryAttempt, DeliveryState, WebhookDelivery
from keystile.webhooks.models import WebhookEndpoint

logger = logging.getLogger(__name__)

_attempts = cast(Table, DeliveryAttempt.__table__)
_deliveries = cast(Table, WebhookDelivery.__table__)
_endpoints = cast(Table, WebhookEndpoint.__table__)

# Core statements (not ORM-enabled ones), so a list of parameters is a plain executemany with its own WHERE.
_SET_DELIVERY_OUTCOME = (
    update(_deliveries)
    .where(_deliveries.c.id == bindparam("b_id"), _deliveries.c.claims == bindparam("b_claim"))
    .values(state=bindparam("b_state"), next_attempt_at=bindparam("b_next"))
)


@dataclass(frozen=True, slots=True)
class Finished:
    """An attempt that was made under a claim, its result not written yet."""

    delivery_id: int
    endpoint_id: int
    attempt: int
    claim: int
    result: AttemptResult


@dataclass(frozen=True, slots=True)
class RecordPolicy:
    retry_delays: tuple[float, ...]
    disable_after_days: int

    @property
    def max_attempts(self) -> int:
        return len(self.retry_delays) + 1


async def write(
    session: AsyncSession, finished: Sequence[Finished], *, now: datetime, policy: RecordPolicy
) -> list[int]:
    """Add the results to the session's transaction (the caller commits); the endpoints this disabled."""
    if not finished:
        return []
    attempts: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for item in finished:
        next_attempt_at: datetime | None = None
        if item.result.delivered:
            state = DeliveryState.DELIVERED
        elif item.attempt >= policy.max_attempts:
            state = DeliveryState.FAILED
        else:
            state = DeliveryState.PENDING
            next_attempt_at = now + timedelta(seconds=policy.retry_delays[item.attempt - 1])
        attempts.append(
            {
                "delivery_id": item.delivery_id,
                "endpoint_id": item.endpoint_id,
                "attempt": item.attempt,
                "at": now,
                "status_code": item.result.status_code,
                "error": item.result.error,
                "next_attempt_at": next_attempt_at,
            }
        )
        outcomes.append({"b_id": item.delivery_id, "b_claim": item.claim, "b_state": state, "b_next": next_attempt_at})
    await session.execute(insert(_attempts), attempts)
    await session.execute(_SET_DELIVERY_OUTCOME, sorted(outcomes, key=lambda row: row["b_id"]))
    return await _endpoints_after(session, finished, now=now, disable_after_days=policy.disable_after_days)


async def _endpoints_after(
    session: AsyncSession, finished: Sequence[Finished], *, now: datetime, disable_after_days: int
) -> list[int]:
    last: dict[int, bool] = {}  # endpoint -> whether its last result in the batch delivered
    succeeded_once: set[int] = set()
    for item in finished:
        last[item.endpoint_id] = item.result.delivered
        if item.result.delivered:
            succeeded_once.add(item.endpoint_id)
    recovered = {endpoint for endpoint, delivered in last.items() if delivered}
    failing = set(last) - recovered
    failing_again = failing & succeeded_once  # failed after a success in this batch: failing from now on
    # One statement for all of them: a batch locks its endpoint rows in one scan, not statement by statement in the
    # order results came in, which two processes' batches could take crosswise (a deadlock).
    await session.execute(
        update(_endpoints)
        .where(
            _endpoints.c.id.in_(sorted(last)),
            _endpoints.c.id.not_in(sorted(recovered)) | _endpoints.c.failing_since.is_not(None),
        )
        .values(
            failing_since=case(
                (_endpoints.c.id.in_(sorted(recovered)), null()),
                (_endpoints.c.id.in_(sorted(failing_again)), literal(now, _endpoints.c.failing_since.type)),
                else_=func.coalesce(_endpoints.c.failing_since, now),
            )
        )
    )
    if not failing or disable_after_days <= 0:
        return []
    disabled = list(
        await session.scalars(
            update(_endpoints)
            .where(
                _endpoints.c.id.in_(sorted(failing)),
                _endpoints.c.enabled.is_(True),
                _endpoints.c.failing_since <= now - timedelta(days=disable_after_days),
            )
            .values(enabled=False)
            .returning(_endpoints.c.id)
        )
    )
    for endpoint_id in disabled:
        logger.warning(
            "webhook endpoint %d disabled: its deliveries have failed for %d days", endpoint_id, disable_after_days
        )
    return disabled
