"""Webhook endpoints as an operator sees them (`keystile webhooks list`): whose, where, and how delivery is going.

Across owners, unlike `service.Webhooks`, which serves one user. Never the signing secret, not even sealed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.events.models import DeliveryAttempt, DeliveryState, WebhookDelivery
from keystile.users.models import User
from keystile.webhooks.models import WebhookEndpoint


@dataclass(frozen=True, slots=True)
class LastAttempt:
    at: datetime
    status_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class EndpointOverview:
    id: int
    owner_email: str
    url: str
    events: list[str]
    enabled: bool
    failing_since: datetime | None
    pending: int
    failed: int
    last_attempt: LastAttempt | None


async def overview(session: AsyncSession, *, owner_id: int | None = None) -> list[EndpointOverview]:
    """Every endpoint (or `owner_id`'s), oldest first, with its deliveries pending and failed and its last attempt."""
    query = (
        select(WebhookEndpoint, User.email).join(User, User.id == WebhookEndpoint.user_id).order_by(WebhookEndpoint.id)
    )
    if owner_id is not None:
        query = query.where(WebhookEndpoint.user_id == owner_id)
    endpoints = (await session.execute(query)).all()
    ids = [row.id for row, _email in endpoints]
    counts = await _delivery_counts(session, ids)
    last = await _last_attempts(session, ids)
    return [
        EndpointOverview(
            id=row.id,
            owner_email=email,
            url=row.url,
            events=list(row.events),
            enabled=row.enabled,
            failing_since=row.failing_since,
            pending=counts.get((row.id, DeliveryState.PENDING), 0),
            failed=counts.get((row.id, DeliveryState.FAILED), 0),
            last_attempt=last.get(row.id),
        )
        for row, email in endpoints
    ]


async def _delivery_counts(session: AsyncSession, ids: Sequence[int]) -> dict[tuple[int, str], int]:
    if not ids:
        return {}
    rows = await session.execute(
        select(WebhookDelivery.endpoint_id, WebhookDelivery.state, func.count())
        .where(
            WebhookDelivery.endpoint_id.in_(ids),
            WebhookDelivery.state.in_([DeliveryState.PENDING, DeliveryState.FAILED]),
        )
        .group_by(WebhookDelivery.endpoint_id, WebhookDelivery.state)
    )
    return {(endpoint_id, state): count for endpoint_id, state, count in rows}


async def _last_attempts(session: AsyncSession, ids: Sequence[int]) -> dict[int, LastAttempt]:
    if not ids:
        return {}
    newest = (
        select(func.max(DeliveryAttempt.id))
        .where(DeliveryAttempt.endpoint_id.in_(ids))
        .group_by(DeliveryAttempt.endpoint_id)
    )
    rows = await session.scalars(select(DeliveryAttempt).where(DeliveryAttempt.id.in_(newest)))
    return {row.endpoint_id: LastAttempt(row.at, row.status_code, row.error) for row in rows}


HEADERS = ("ID", "OWNER", "URL", "EVENTS", "ENABLED", "PENDING", "FAILED", "LAST ATTEMPT")


def table(endpoints: Sequence[EndpointOverview]) -> str:
    """Aligned columns under a header line, one endpoint a line (for a terminal: `--email` narrows it)."""
    rows = [HEADERS, *(_cells(endpoint) for endpoint in endpoints)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADERS) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


def _cells(endpoint: EndpointOverview) -> tuple[str, ...]:
    enabled = "yes" if endpoint.enabled else "no"
    if endpoint.failing_since is not None:
        enabled += f" (failing since {_time(endpoint.failing_since)})"
    return (
        str(endpoint.id),
        endpoint.owner_email,
        endpoint.url,
        ",".join(endpoint.events),
        enabled,
        str(endpoint.pending),
        str(endpoint.failed),
        _attempt(endpoint.last_attempt),
    )


def _attempt(attempt: LastAttempt | None) -> str:
    if attempt is None:
        return "-"
    outcome = " ".join(part for part in (str(attempt.status_code or ""), attempt.error or "") if part)
    return f"{_time(attempt.at)} {outcome}"


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%SZ")
