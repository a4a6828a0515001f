"""Two real `keystile serve` processes on one PostgreSQL and Redis: requests spread over both at once, then SIGTERM,
and the stored hourly counts equal the requests made, per key and outcome (and `use_count` the valid ones)."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.process import KeystileServer, register_and_issue_key

pytestmark = [pytest.mark.process, pytest.mark.postgres, pytest.mark.redis]

CONCURRENCY = 16
# What each refusal of GET /data/export is counted as. A refused known key (revoked) is a failed attempt: 401, or 429
# once the address has failed too often, and `rejected` either way.
EXPORT_CATEGORY = {
    (200, None): "valid",
    (429, "API key rate limit exceeded"): "rate_limited",
    (429, "API key quota exhausted"): "quota_exceeded",
    (401, "Invalid or expired API key"): "rejected",
    (429, "Too many failed API key attempts"): "rejected",
}
CATEGORIES = ("valid", "rate_limited", "quota_exceeded", "rejected")
VERIFY_CATEGORY = {"VALID": "valid", "RATE_LIMITED": "rate_limited", "QUOTA_EXCEEDED": "quota_exceeded"}


@pytest.fixture
def servers() -> Iterator[list[KeystileServer]]:
    started: list[KeystileServer] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[KeystileServer], env: dict[str, str], cwd: Path) -> KeystileServer:
    server = KeystileServer(env, cwd)
    servers.append(server)
    server.start()
    return server


def issue(base_url: str, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        response = http.post("/keys/", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return dict(response.json())


class Tally:
    """What the servers answered, as the usage categories they should have counted (per key id)."""

    def __init__(self) -> None:
        self.counts: dict[int, Counter[str]] = {}

    def add(self, api_key_id: int, category: str) -> None:
        self.counts.setdefault(api_key_id, Counter())[category] += 1


async def make_requests(urls: list[str], keys: dict[str, dict[str, Any]], plan: list[tuple[str, str]]) -> Tally:
    """Send `plan` ((kind, key name) pairs) over both servers at once, CONCURRENCY in flight; tally the answers."""
    tally = Tally()
    verifier = {"X-API-Key": keys["verifier"]["key"]}
    gate = asyncio.Semaphore(CONCURRENCY)

    async def send(http: httpx.AsyncClient, index: int, kind: str, name: str) -> None:
        base = urls[index % len(urls)]
        async with gate:
            if kind == "export":
                response = await http.get(f"{base}/data/export", headers={"X-API-Key": keys[name]["key"]})
                detail = None if response.status_code == 200 else response.json()["detail"]
                tally.add(keys[name]["id"], EXPORT_CATEGORY[(response.status_code, detail)])
            else:
                body = {"key": keys[name]["key"], "scopes": ["write"]}
                response = await http.post(f"{base}/v1/keys/verify", json=body, headers=verifier)
                assert response.status_code == 200, response.text
                tally.add(keys["verifier"]["id"], "valid")  # the caller's key: each call is one valid use
                tally.add(keys[name]["id"], VERIFY_CATEGORY.get(response.json()["code"], "rejected"))

    async with httpx.AsyncClient(timeout=30.0) as http:
        await asyncio.gather(*(send(http, index, kind, name) for index, (kind, name) in enumerate(plan)))
    return tally


async def stored_counts(url: str) -> tuple[dict[int, Counter[str]], dict[int, int]]:
    """Per key: its hour rows summed by outcome, and its use_count."""
    connection = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    try:
        hours = await connection.fetch(
            "SELECT api_key_id, sum(valid) AS valid, sum(rate_limited) AS rate_limited,"
            " sum(quota_exceeded) AS quota_exceeded, sum(rejected) AS rejected"
            " FROM key_usage_hours GROUP BY api_key_id"
        )
        uses = await connection.fetch("SELECT id, use_count FROM api_keys")
    finally:
        await connection.close()
    counts = {row["api_key_id"]: Counter({name: int(row[name]) for name in CATEGORIES if row[name]}) for row in hours}
    return counts, {row["id"]: row["use_count"] for row in uses}


def test_usage_counts_equal_the_requests_made_across_two_processes_after_sigterm(
    servers: list[KeystileServer], redis_url: str, tmp_path: Path
) -> None:
    database = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_usage_processes")
    env = {
        "KEYSTILE_DATABASE_URL": database,
        "KEYSTILE_REDIS_URL": redis_url,
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
    }
    a = start(servers, env, tmp_path)  # A migrates first; B then finds the schema current
    b = start(servers, env, tmp_path)
    headers, plain = register_and_issue_key(a.url, scopes=["read"])
    keys = {
        "plain": plain,
        "limited": issue(b.url, headers, name="limited", rate_limit={"limit": 10, "window_seconds": 3600}),
        "quota": issue(a.url, headers, name="quota", quota=7),
        "revoked": issue(b.url, headers, name="revoked"),
        "verifier": issue(a.url, headers, name="verifier", scopes=["keys:verify"]),
        "unused": issue(a.url, headers, name="unused"),
    }
    with httpx.Client(base_url=a.url, timeout=10.0) as http:
        assert http.post(f"/keys/{keys['revoked']['id']}/revoke", headers=headers).status_code == 200
    plan = (
        [("export", "plain")] * 120
        + [("export", "limited")] * 30
        + [("export", "quota")] * 20
        + [("export", "revoked")] * 12
        + [("verify", "plain")] * 15
        + [("verify", "limited")] * 5
    )
    random.Random(7).shuffle(plan)

    tally = asyncio.run(make_requests([a.url, b.url], keys, plan))
    exits = [server.stop() for server in (a, b)]

    assert all(status in (0, -signal.SIGTERM) for status in exits), a.log + b.log
    assert "Traceback" not in a.log + b.log
    hours, use_counts = asyncio.run(stored_counts(database))
    assert hours == tally.counts
    assert sum(sum(counts.values()) for counts in hours.values()) == len(plan) + 20  # each verify call counts twice
    assert tally.counts[keys["quota"]["id"]]["valid"] == 7
    assert tally.counts[keys["revoked"]["id"]] == Counter(rejected=12)
    for name, created in keys.items():
        assert use_counts[created["id"]] == tally.counts.get(created["id"], Counter())["valid"], name
