"""`GET /keys/{id}/usage` and `GET /identities/{id}/usage`: verifications per hour or day, by outcome.

Thin: check that the caller owns the key or identity (someone else's is 404, admins included, as on /keys and
/identities: `KeyNotFoundError` and `IdentityNotFoundError` in keystile.errors), write this process's buffered counts,
then read the window (`usage.history`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError

from keystile.deps import CurrentUser, IdentityPk, KeyPk, KeysDep, KeystileDep, SessionDep
from keystile.responses import BEARER_ANSWERS, IDENTITY_NOT_FOUND, KEY_NOT_FOUND
from keystile.usage import history
from keystile.usage.history import MAX_BUCKETS, Window, WindowError
from keystile.usage.schemas import Interval, UsageHistory

router = APIRouter(tags=["usage"], responses=BEARER_ANSWERS)


_DESCRIPTION = f"""\
Verifications by outcome in UTC buckets of an hour or a day, oldest first, zero-filled: on protected routes and
through `/v1/keys/verify` alike. `rejected` counts refusals after the secret matched (disabled, expired, revoked,
scope, address); a key that is not found is counted nowhere.

`since` is rounded down to the start of its bucket and `until` (exclusive) up to the end of its bucket. Without
`until` the window ends with the current bucket; without `since` it holds the last 24 hours or 30 days. Times are
ISO 8601; **a time without an offset is taken as UTC**. At most {MAX_BUCKETS} buckets per call; more, or `since`
after `until`, is 422. Counts are kept `KEYSTILE_USAGE_RETENTION_DAYS` days (default 90), and include what this
process has counted but not yet written.
"""


async def _window(
    keystile: KeystileDep,
    interval: Annotated[Interval, Query(description="Bucket length")] = "hour",
    since: Annotated[datetime | None, Query(description="Start, ISO 8601 (no offset: UTC)")] = None,
    until: Annotated[datetime | None, Query(description="End (exclusive), ISO 8601 (no offset: UTC)")] = None,
) -> Window:
    try:
        return Window.of(interval, since, until, now=keystile.clock())
    except WindowError as error:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", error.field), "msg": str(error)}]
        ) from None


UsageWindow = Annotated[Window, Depends(_window)]


@router.get(
    "/keys/{key_pk}/usage",
    response_model=UsageHistory,
    responses=KEY_NOT_FOUND,
    summary="A key's verifications per hour or day, by outcome",
    description=_DESCRIPTION,
)
async def key_usage(
    key_pk: KeyPk, window: UsageWindow, keys: KeysDep, user: CurrentUser, keystile: KeystileDep, session: SessionDep
) -> UsageHistory:
    await keys.get(key_pk, owner_id=user.id)
    await keystile.usage.flush()
    return UsageHistory(interval=window.interval, buckets=await history.key_usage(session, key_pk, window))


@router.get(
    "/identities/{identity_pk}/usage",
    response_model=UsageHistory,
    responses=IDENTITY_NOT_FOUND,
    summary="An identity's verifications (all its keys) per hour or day, by outcome",
    description=_DESCRIPTION,
)
async def identity_usage(
    identity_pk: IdentityPk, window: UsageWindow, user: CurrentUser, keystile: KeystileDep, session: SessionDep
) -> UsageHistory:
    await keystile.identity_manager(session).get(identity_pk, owner_id=user.id)
    await keystile.usage.flush()
    return UsageHistory(interval=window.interval, buckets=await history.identity_usage(session, identity_pk, window))
