"""The delivery worker's own pool survives PostgreSQL dropping its connections: deliveries go on, and no dropped
connection is left for the garbage collector to close (asyncpg then warns from `Connection.__del__`)."""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from keystile.app import create_app
from keystile.clock import FakeClock
from tests import backends
from tests.conftest import make_settings
from tests.events.helpers import FAST_DELIVERY, add_webhook
from tests.events.receiver import Receiver
from tests.helpers import CHEAP_PASSWORDS, KeystileClient, create_key, user_headers

pytestmark = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


async def terminate_other_backends() -> int:
    """Make PostgreSQL drop every connection to the test database but this one, as a restart or failover would."""
    admin = await asyncpg.connect(backends.POSTGRES_URL.replace("+asyncpg", ""), timeout=5)
    try:
        return int(
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await admin.close()


def unraisable_in_collection() -> list[str]:
    """What the garbage collector could not finalize cleanly, warnings counted as errors (as the suite does)."""
    caught: list[str] = []

    def hook(unraisable: Any) -> None:
        caught.append(f"{unraisable.object!r}: {unraisable.exc_type.__name__}: {unraisable.exc_value}")

    previous = sys.unraisablehook
    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gc.collect()
    finally:
        sys.unraisablehook = previous
    return caught


async def test_deliveries_go_on_after_the_database_drops_the_workers_connections_and_none_is_left_unclosed(
    database_url: str, clock: FakeClock, receiver: Receiver
) -> None:
    app = create_app(make_settings(database_url, **FAST_DELIVERY), clock=clock, passwords=CHEAP_PASSWORDS)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with KeystileClient(transport=transport, base_url="http://testserver") as client:
            headers = await user_headers(client)
            await add_webhook(client, headers, receiver.url, events=["key.created"])
            await create_key(client, headers, name="before")
            await receiver.received(1)
            worker_pool = app.state.keystile.events.engine.pool
            assert worker_pool.checkedin() >= 1  # the worker keeps a connection between rounds

            dropped = await terminate_other_backends()
            await create_key(client, headers, name="after")
            received = await receiver.received(2)
    checked_out = worker_pool.checkedout()
    # Shut down, and let go of the app: whatever it did not close, the garbage collector now finds.
    del app, transport, client, worker_pool
    collected = unraisable_in_collection()

    assert dropped >= 2  # the requests' connection and the worker's
    assert sorted(request.json["data"]["name"] for request in received) == ["after", "before"]
    assert checked_out == 0
    assert collected == []
