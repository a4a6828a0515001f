"""A dispatcher round writes the results of all the attempts it collected in one transaction (`events/recording.py`),
and batching loses nothing: a result that cannot be written with the others is written alone, one that cannot be
written at all is delivered again after its lease, and two dispatchers still never make the same attempt."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, select

from keystile.clock import FakeClock
from keystile.events import outbox, recording
from keystile.events.delivery import AttemptResult
from keystile.events.models import DeliveryAttempt, DeliveryState, OutboxEvent, WebhookDelivery
from keystile.events.recording import Finished, RecordPolicy
from keystile.instance import Keystile
from keystile.users import service as users_service
from keystile.webhooks.models import WebhookEndpoint
from keystile.webhooks.schemas import WebhookCreate
from keystile.webhooks.service import Webhooks
from tests.conftest import make_settings
from tests.events.helpers import FAST_DELIVERY, eventually
from tests.events.receiver import Receiver, verify_signature
from tests.helpers import CHEAP_PASSWORDS

OK = AttemptResult(200, None)
FAILED = AttemptResult(500, None)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@contextlib.asynccontextmanager
async def quiet_keystile(database_url: str, clock: FakeClock) -> AsyncIterator[Keystile]:
    """An instance whose dispatcher runs only when the test says so."""
    settings = make_settings(database_url, **FAST_DELIVERY)
    async with Keystile(settings, clock=clock, passwords=CHEAP_PASSWORDS, deliver_events=False) as keystile:
        yield keystile


@pytest.fixture
async def keystile(database_url: str, clock: FakeClock) -> AsyncIterator[Keystile]:
    async with quiet_keystile(database_url, clock) as instance:
        yield instance


@dataclass
class Owner:
    id: int
    endpoint_ids: list[int]
    secrets: dict[int, str]


async def owner_with_endpoints(keystile: Keystile, urls: Sequence[str]) -> Owner:
    async with keystile.session_factory() as session:
        user = await users_service.create_user(
            session,
            email="owner@example.com",
            password="a-long-password",
            passwords=keystile.passwords,
            now=keystile.clock(),
        )
        await session.commit()
        webhooks = Webhooks(session, secrets=keystile.events.secrets, clock=keystile.clock, allow_private=True)
        created = [
            await webhooks.create(owner_id=user.id, spec=WebhookCreate(url=url, events=["key.created"])) for url in urls
        ]
        return Owner(user.id, [item.row.id for item in created], {item.row.id: item.secret for item in created})


async def emit(keystile: Keystile, owner: Owner, count: int) -> None:
    async with keystile.session_factory() as session:
        for number in range(count):
            data = {"id": number, "name": f"key {number}"}
            outbox.emit(session, outbox.PendingEvent("key.created", owner.id, data, keystile.clock()))
        await session.commit()


async def deliveries(keystile: Keystile) -> list[Any]:
    async with keystile.session_factory() as session:
        query = select(WebhookDelivery.id, WebhookDelivery.endpoint_id, WebhookDelivery.state, WebhookDelivery.claims)
        return list((await session.execute(query.order_by(WebhookDelivery.id))).all())


async def attempt_rows(keystile: Keystile) -> list[Any]:
    async with keystile.session_factory() as session:
        query = select(DeliveryAttempt.delivery_id, DeliveryAttempt.attempt, DeliveryAttempt.status_code)
        return list((await session.execute(query.order_by(DeliveryAttempt.id))).all())


@contextlib.contextmanager
def transactions_of(keystile: Keystile) -> Iterator[tuple[list[str], list[str]]]:
    """The statements and commits the dispatcher's engine runs meanwhile."""
    statements: list[str] = []
    commits: list[str] = []
    engine = keystile.events.engine.sync_engine

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    def on_commit(_conn: Any) -> None:
        commits.append("commit")

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    try:
        yield statements, commits
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)


async def test_a_round_records_all_the_attempts_it_collected_in_one_transaction(
    keystile: Keystile, receiver: Receiver
) -> None:
    owner = await owner_with_endpoints(keystile, [f"{receiver.url}/{number}" for number in range(4)])
    await emit(keystile, owner, 5)
    dispatcher = keystile.events.dispatcher

    assert await dispatcher.run_once() == 20  # fanned out and claimed in one round, within the limits
    await dispatcher.settle()
    with transactions_of(keystile) as (statements, commits):
        assert await dispatcher.run_once() == 0

    assert commits == ["commit"]
    assert sum(statement.startswith("INSERT INTO webhook_attempts") for statement in statements) == 1
    assert sum(statement.startswith("UPDATE webhook_deliveries SET state") for statement in statements) == 1
    assert len(statements) <= 6, statements  # the same few statements for 20 results as for one
    assert [row.state for row in await deliveries(keystile)] == [DeliveryState.DELIVERED] * 20
    assert sorted((row.attempt, row.status_code) for row in await attempt_rows(keystile)) == [(1, 200)] * 20
    assert len(receiver.requests) == 20
    assert set(Counter(request.webhook_id for request in receiver.requests).values()) == {4}
    for request in receiver.requests:
        endpoint_id = owner.endpoint_ids[int(request.path.rsplit("/", 1)[1])]
        assert verify_signature(owner.secrets[endpoint_id], request)


async def test_a_round_takes_no_more_deliveries_of_an_endpoint_than_its_limit(
    keystile: Keystile, receiver: Receiver
) -> None:
    owner = await owner_with_endpoints(keystile, [receiver.url])
    await emit(keystile, owner, 20)
    dispatcher = keystile.events.dispatcher

    started = await dispatcher.run_once()
    await dispatcher.settle()

    assert started == dispatcher.policy.per_endpoint == 8
    assert len(receiver.requests) == 8
    assert await dispatcher.run_once() == 8  # the first 8 recorded, their slots free again
    await dispatcher.settle()
    assert len(receiver.requests) == 16


async def test_a_result_that_cannot_be_written_does_not_take_the_rounds_other_results_with_it(
    keystile: Keystile, receiver: Receiver
) -> None:
    owner = await owner_with_endpoints(keystile, [f"{receiver.url}/kept", f"{receiver.url}/deleted"])
    kept, deleted = owner.endpoint_ids
    await emit(keystile, owner, 1)
    dispatcher = keystile.events.dispatcher
    assert await dispatcher.run_once() == 2
    await dispatcher.settle()
    async with keystile.session_factory() as session:  # deleted while its attempt was made: its delivery goes too
        await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == deleted))
        await session.commit()

    await dispatcher.run_once()  # the batch's INSERT fails on the deleted delivery; each result is written alone
    await dispatcher.run_once()

    (row,) = await deliveries(keystile)
    assert (row.endpoint_id, row.state) == (kept, DeliveryState.DELIVERED)
    assert [(item.delivery_id, item.attempt, item.status_code) for item in await attempt_rows(keystile)] == [
        (row.id, 1, 200)
    ]
    assert sorted(request.path for request in receiver.requests) == ["/hook/deleted", "/hook/kept"]


async def test_results_that_cannot_be_written_at_all_are_delivered_again_once_their_lease_ends(
    keystile: Keystile, receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await owner_with_endpoints(keystile, [receiver.url])
    await emit(keystile, owner, 2)
    dispatcher = keystile.events.dispatcher
    assert await dispatcher.run_once() == 2
    await dispatcher.settle()
    write = recording.write

    async def database_gone(session: Any, finished: Sequence[Finished], **kwargs: Any) -> list[int]:
        if finished:
            raise ConnectionResetError("the database went away")
        return await write(session, finished, **kwargs)

    monkeypatch.setattr(recording, "write", database_gone)
    await dispatcher.run_once()
    monkeypatch.undo()
    assert await attempt_rows(keystile) == []
    assert await dispatcher.run_once() == 0  # still leased
    clock.advance(dispatcher.policy.lease_seconds)
    assert await dispatcher.run_once() == 2
    await dispatcher.settle()
    await dispatcher.run_once()

    assert [row.state for row in await deliveries(keystile)] == [DeliveryState.DELIVERED] * 2
    assert sorted((row.attempt, row.status_code) for row in await attempt_rows(keystile)) == [(2, 200)] * 2
    sent = Counter(request.webhook_id for request in receiver.requests)
    assert len(sent) == 2
    assert set(sent.values()) == {2}  # at least once: each event again, with its own webhook-id


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
async def test_two_dispatchers_on_one_database_never_make_the_same_attempt(
    database_url: str, clock: FakeClock, keystile: Keystile, receiver: Receiver
) -> None:
    owner = await owner_with_endpoints(keystile, [f"{receiver.url}/{number}" for number in range(4)])
    await emit(keystile, owner, 30)

    async def all_delivered() -> bool:
        return [row.state for row in await deliveries(keystile)] == [DeliveryState.DELIVERED] * 120

    async with quiet_keystile(database_url, clock) as other:
        loops = [
            asyncio.create_task(keystile.events.dispatcher.run()),
            asyncio.create_task(other.events.dispatcher.run()),
        ]
        try:
            await eventually(all_delivered)
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
    await keystile.events.dispatcher.close()

    rows = await deliveries(keystile)
    assert len(rows) == 120
    assert [row.claims for row in rows] == [1] * 120
    assert sorted((row.attempt, row.status_code) for row in await attempt_rows(keystile)) == [(1, 200)] * 120
    assert len(receiver.requests) == 120
    assert len({(request.path, request.webhook_id) for request in receiver.requests}) == 120


async def claimed_deliveries(keystile: Keystile, endpoint_id: int, count: int) -> list[int]:
    """Deliveries as a claim leaves them (attempt 1, claim 1), without sending anything."""
    async with keystile.session_factory() as session:
        events = list(await session.scalars(select(OutboxEvent.id).order_by(OutboxEvent.id)))
        rows = [
            WebhookDelivery(
                event_pk=event_pk,
                endpoint_id=endpoint_id,
                state=DeliveryState.PENDING,
                attempts=1,
                claims=1,
                next_attempt_at=keystile.clock(),
            )
            for event_pk in events[:count]
        ]
        session.add_all(rows)
        await session.commit()
        return [row.id for row in rows]


async def write_results(
    keystile: Keystile, endpoint_id: int, results: Sequence[AttemptResult], *, failing_since: datetime | None
) -> tuple[list[int], Any]:
    """Record `results` (in that order) for one endpoint whose failures began at `failing_since`: what was disabled,
    and the endpoint after."""
    delivery_ids = await claimed_deliveries(keystile, endpoint_id, len(results))
    finished = [
        Finished(delivery, endpoint_id, 1, 1, result) for delivery, result in zip(delivery_ids, results, strict=True)
    ]
    async with keystile.session_factory() as session:
        endpoint = await session.get_one(WebhookEndpoint, endpoint_id)
        endpoint.failing_since = failing_since
        await session.commit()
        policy = RecordPolicy(retry_delays=(1.0,), disable_after_days=5)
        disabled = await recording.write(session, finished, now=keystile.clock(), policy=policy)
        await session.commit()
        after = (
            await session.execute(
                select(WebhookEndpoint.enabled, WebhookEndpoint.failing_since).where(WebhookEndpoint.id == endpoint_id)
            )
        ).one()
    return disabled, after


@pytest.mark.parametrize(
    ("results", "failing_days_ago", "failing_days_after", "disabled"),
    [
        pytest.param([FAILED, OK], 6, None, False, id="success-last-clears"),
        pytest.param([OK, FAILED], 6, 0, False, id="failure-after-success-starts-now"),
        pytest.param([FAILED, FAILED], None, 0, False, id="first-failures-start-now"),
        pytest.param([FAILED, FAILED], 2, 2, False, id="failing-keeps-its-start"),
        pytest.param([FAILED, FAILED], 6, 6, True, id="failing-too-long-disables"),
    ],
)
async def test_an_endpoints_last_result_in_a_batch_decides_its_failing_since(
    keystile: Keystile,
    clock: FakeClock,
    results: list[AttemptResult],
    failing_days_ago: int | None,
    failing_days_after: int | None,
    disabled: bool,
) -> None:
    owner = await owner_with_endpoints(keystile, ["http://127.0.0.1:9/hook"])
    (endpoint_id,) = owner.endpoint_ids
    await emit(keystile, owner, len(results))
    since = None if failing_days_ago is None else clock() - timedelta(days=failing_days_ago)

    went, after = await write_results(keystile, endpoint_id, results, failing_since=since)

    assert went == ([endpoint_id] if disabled else [])
    assert after.enabled is not disabled
    expected = None if failing_days_after is None else clock() - timedelta(days=failing_days_after)
    assert after.failing_since == expected


async def test_a_result_of_a_claim_taken_over_is_logged_but_leaves_the_delivery_alone(keystile: Keystile) -> None:
    owner = await owner_with_endpoints(keystile, ["http://127.0.0.1:9/hook"])
    (endpoint_id,) = owner.endpoint_ids
    await emit(keystile, owner, 1)
    (delivery_id,) = await claimed_deliveries(keystile, endpoint_id, 1)
    stale = Finished(delivery_id, endpoint_id, 1, 0, OK)  # claim 0: another claim (1) took the delivery over

    async with keystile.session_factory() as session:
        policy = RecordPolicy(retry_delays=(1.0,), disable_after_days=5)
        await recording.write(session, [stale], now=keystile.clock(), policy=policy)
        await session.commit()

    (row,) = await deliveries(keystile)
    assert (row.state, row.claims) == (DeliveryState.PENDING, 1)
    assert [(item.attempt, item.status_code) for item in await attempt_rows(keystile)] == [(1, 200)]
