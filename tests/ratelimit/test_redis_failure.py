"""Redis stopped mid-run and started again: RATE_LIMIT_FAILURE holds, the incident is counted once, limiting resumes.

Each test runs its own `redis-server` (`own_redis`), so stopping it never disturbs the shared Redis other tests use.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from keystile.clock import FakeClock
from keystile.ratelimit import guard
from tests.conftest import MakeClient
from tests.helpers import EXPORT, FakeMonotonic, KeystileClient, align, create_key, login, user_headers
from tests.ratelimit.conftest import RedisServer

pytestmark = pytest.mark.redis

CLOSED_DETAIL = "Rate limiting is unavailable and this deployment fails closed"
FAILURES_METRIC = "keystile_rate_limiter_failures_total"


@pytest.fixture
def monotonic() -> FakeMonotonic:
    """The app's interval clock, so the guard's retry interval passes when the test says (the event loop keeps the
    real one)."""
    return FakeMonotonic()


async def failures_metric(client: httpx.AsyncClient) -> str:
    text = (await client.get("/metrics")).text
    return next(line for line in text.splitlines() if line.startswith(FAILURES_METRIC))


def guard_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == guard.__name__ and r.levelno == level]


async def started(make_client: MakeClient, own_redis: RedisServer, mode: str) -> tuple[KeystileClient, dict[str, Any]]:
    client = await make_client(redis_url=own_redis.url, rate_limit_failure=mode)
    headers = await user_headers(client)
    created = await create_key(client, headers, rate_limit={"limit": 2, "window_seconds": 60})
    return client, created


async def test_with_failure_open_requests_succeed_unlimited_while_redis_is_down_and_limits_resume_after(
    make_client: MakeClient,
    own_redis: RedisServer,
    monotonic: FakeMonotonic,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=guard.__name__)
    client, created = await started(make_client, own_redis, "open")
    key = {"X-API-Key": created["key"]}
    align(clock, 60)
    before = await client.get(EXPORT, headers=key)

    own_redis.stop()
    during = [await client.get(EXPORT, headers=key) for _ in range(10)]
    monotonic.now += 5  # several retry intervals pass; each retry fails again but is the same incident
    during += [await client.get(EXPORT, headers=key) for _ in range(10)]
    logged_in = await login(client)
    ready_while_down = await client.get("/readyz")
    metric_while_down = await failures_metric(client)

    own_redis.start()
    monotonic.now += guard.RETRY_INTERVAL_SECONDS + 0.001
    after = [await client.get(EXPORT, headers=key) for _ in range(3)]
    ready_after = await client.get("/readyz")

    assert before.status_code == 200
    assert before.headers["RateLimit"] == '"key";r=1;t=60'
    assert {r.status_code for r in during} == {200}
    assert not any("RateLimit" in r.headers for r in during)
    assert logged_in["Authorization"].startswith("Bearer ")
    assert ready_while_down.status_code == 503
    assert ready_while_down.json() == {"status": "unavailable", "down": ["redis"]}
    assert metric_while_down == f"{FAILURES_METRIC} 1.0"
    assert len(guard_records(caplog, logging.ERROR)) == 1
    assert [r.status_code for r in after] == [200, 200, 429]  # the restarted Redis is empty: a fresh window
    assert after[0].headers["RateLimit"] == '"key";r=1;t=60'
    assert after[2].json() == {"detail": "API key rate limit exceeded"}
    assert ready_after.status_code == 200
    assert len(guard_records(caplog, logging.WARNING)) == 1  # "back after ...", once
    assert await failures_metric(client) == f"{FAILURES_METRIC} 1.0"


async def test_with_failure_closed_key_requests_get_503_while_redis_is_down_and_work_after(
    make_client: MakeClient,
    own_redis: RedisServer,
    monotonic: FakeMonotonic,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=guard.__name__)
    client, created = await started(make_client, own_redis, "closed")
    key = {"X-API-Key": created["key"]}
    align(clock, 60)

    own_redis.stop()
    during = [await client.get(EXPORT, headers=key) for _ in range(10)]
    monotonic.now += 5
    during += [await client.get(EXPORT, headers=key) for _ in range(10)]
    healthz = await client.get("/healthz")
    metric_while_down = await failures_metric(client)

    own_redis.start()
    monotonic.now += guard.RETRY_INTERVAL_SECONDS + 0.001
    after = [await client.get(EXPORT, headers=key) for _ in range(3)]

    assert {r.status_code for r in during} == {503}
    assert {r.json()["detail"] for r in during} == {CLOSED_DETAIL}
    assert during[0].headers["Retry-After"] == "1"
    assert healthz.status_code == 200
    assert metric_while_down == f"{FAILURES_METRIC} 1.0"
    assert len(guard_records(caplog, logging.ERROR)) == 1
    assert [r.status_code for r in after] == [200, 200, 429]
    assert await failures_metric(client) == f"{FAILURES_METRIC} 1.0"


async def test_a_second_outage_is_a_second_incident(
    make_client: MakeClient, own_redis: RedisServer, monotonic: FakeMonotonic, clock: FakeClock
) -> None:
    client, created = await started(make_client, own_redis, "open")
    key = {"X-API-Key": created["key"]}

    for _ in range(2):
        own_redis.stop()
        for _ in range(5):
            assert (await client.get(EXPORT, headers=key)).status_code == 200
        own_redis.start()
        monotonic.now += guard.RETRY_INTERVAL_SECONDS + 0.001
        clock.advance(60)
        recovered = await client.get(EXPORT, headers=key)
        assert "RateLimit" in recovered.headers

    assert await failures_metric(client) == f"{FAILURES_METRIC} 2.0"
