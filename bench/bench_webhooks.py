"""Webhook delivery throughput of one keystile process, against a baseline measured in the same run.

    .venv/bin/python bench/bench_webhooks.py [--quick]

The receiver is a minimal HTTP/1.1 server (asyncio, keep-alive, answers 200 "ok") in a process of its own, so it
costs keystile's process nothing. Baseline: the most this process can send it with httpx alone, `httpx.AsyncClient`
configured as the dispatcher's (`events.delivery.new_client`) POSTing the same signed body with as many requests in
flight as the dispatcher allows. keystile: events already in the outbox (written in one transaction, as a burst of
key changes would leave them), then the dispatcher alone, timed from its start until every delivery is recorded
`delivered`: fan-out, claims, SSRF check (`KEYSTILE_WEBHOOK_ALLOW_PRIVATE=true` here, so no DNS), signing, the POST,
and recording each attempt. Rounds alternate baseline and keystile; a ratio is the median over rounds of keystile /
baseline in the same round, so load from other processes on the machine moves both.

Two shapes, with the default limits: one endpoint (at most `KEYSTILE_WEBHOOK_ENDPOINT_CONCURRENCY`, 8, in flight)
and eight endpoints of one owner on the same receiver (32 in flight, `KEYSTILE_WEBHOOK_CONCURRENCY`). SQLite, and
PostgreSQL when `KEYSTILE_BENCH_POSTGRES_ADMIN_URL` (default `postgresql://postgres@127.0.0.1:5432/test`) answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from bench_verify import SECRET_KEY, machine, postgres_database
from keystile import migrations
from keystile.events import outbox, signing
from keystile.events.delivery import new_client
from keystile.events.models import DeliveryState, WebhookDelivery
from keystile.instance import Keystile
from keystile.settings import Settings
from keystile.users import service as users_service
from keystile.webhooks.schemas import WebhookCreate
from keystile.webhooks.service import Webhooks

RECEIVER = """
import asyncio, sys

ANSWER = b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok"

async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            length = 0
            for line in head.split(b"\\r\\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""
SHAPES = {"1 endpoint, 8 in flight": 1, "8 endpoints, 32 in flight": 8}
PER_ENDPOINT = 8
POLL_SECONDS = 0.02


@contextlib.contextmanager
def receiver() -> Any:
    """The receiver process; yields its URL."""
    process = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield f"http://127.0.0.1:{process.stdout.readline().strip()}/hook"
    finally:
        process.terminate()
        process.wait()


def sample_body() -> bytes:
    """A key.created body as keystile sends it (the key object of the API)."""
    data = {
        "id": 123456,
        "hint": "ks_7Hq2...K9",
        "name": "bench key",
        "owner_id": 42,
        "scopes": ["read", "write"],
        "created_at": "2025-01-31T12:00:00Z",
        "expires_at": None,
        "rate_limit": {"limit": 100, "window_seconds": 60},
        "quota_remaining": None,
        "quota_refill": None,
        "quota_refilled_at": None,
        "ip_allowlist": [],
        "metadata": {},
        "is_active": True,
        "enabled": True,
        "identity_id": None,
        "last_used_at": None,
        "use_count": 0,
        "revoked_at": None,
        "rotated_from": None,
    }
    return outbox.body_of("key.created", datetime.now(UTC), data).encode()


async def baseline(url: str, total: int, in_flight: int) -> float:
    """Requests per second: httpx alone, `in_flight` workers sharing `total` signed POSTs."""
    body, secret = sample_body(), signing.new_secret()
    remaining = total

    async with new_client(max_connections=in_flight) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                headers = signing.headers(
                    secret, message_id=outbox.new_event_id(), timestamp=int(time.time()), body=body
                )
                response = await client.post(url, content=body, headers=headers)
                response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return total / (time.perf_counter() - start)


@dataclass
class Target:
    keystile: Keystile
    owner_id: int


async def target(stack: contextlib.AsyncExitStack, database_url: str, url: str, endpoints: int) -> Target:
    """An instance that does not deliver by itself (the bench runs its dispatcher), a user and its endpoints."""
    settings = Settings(database_url=database_url, secret_key=SECRET_KEY, webhook_allow_private=True)
    keystile = await stack.enter_async_context(Keystile(settings, deliver_events=False))
    async with keystile.session_factory() as session:
        user = await users_service.create_user(
            session,
            email=f"bench{endpoints}@example.com",
            password="bench-password",
            passwords=keystile.passwords,
            now=keystile.clock(),
        )
        await session.commit()
        webhooks = Webhooks(session, secrets=keystile.events.secrets, clock=keystile.clock, allow_private=True)
        for number in range(endpoints):
            spec = WebhookCreate(url=f"{url}/{number}", events=["key.created"])
            await webhooks.create(owner_id=user.id, spec=spec)
    return Target(keystile, user.id)


async def delivered(target: Target) -> int:
    async with target.keystile.session_factory() as session:
        query = select(func.count()).where(WebhookDelivery.state == DeliveryState.DELIVERED)
        return int(await session.scalar(query) or 0)


async def keystile_round(target: Target, deliveries: int, endpoints: int) -> float:
    """Deliveries per second: `deliveries` queued as events in the outbox, sent by the dispatcher alone."""
    keystile, before = target.keystile, await delivered(target)
    data = json.loads(sample_body())["data"]
    async with keystile.session_factory() as session:
        for _ in range(deliveries // endpoints):
            outbox.emit(session, outbox.PendingEvent("key.created", target.owner_id, data, keystile.clock()))
        await session.commit()
    start = time.perf_counter()
    dispatcher = asyncio.create_task(keystile.events.dispatcher.run())
    try:
        while True:
            if await delivered(target) >= before + deliveries:
                return deliveries / (time.perf_counter() - start)
            await asyncio.sleep(POLL_SECONDS)  # polling the database the dispatcher writes to
    finally:
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher


@contextlib.asynccontextmanager
async def databases(directory: str) -> AsyncIterator[dict[str, str]]:
    url = f"sqlite+aiosqlite:///{directory}/bench.db"
    await asyncio.to_thread(migrations.upgrade, url)
    found = {"SQLite": url}
    async with contextlib.AsyncExitStack() as stack:
        try:
            found["PostgreSQL"] = await stack.enter_async_context(postgres_database("keystile_bench_webhooks"))
        except OSError as error:
            print(f"PostgreSQL skipped: {error!r}", file=sys.stderr)
        yield found


async def main() -> None:
    quick = "--quick" in sys.argv
    deliveries, rounds = (200, 3) if quick else (1000, 3)
    results: dict[str, dict[str, float]] = {}
    with receiver() as url, tempfile.TemporaryDirectory() as directory:
        async with databases(directory) as urls, contextlib.AsyncExitStack() as stack:
            await baseline(url, 200, PER_ENDPOINT)  # warm up: connections, imports
            for label, database_url in urls.items():
                for shape, endpoints in SHAPES.items():
                    bench_target = await target(stack, database_url, url, endpoints)
                    await keystile_round(bench_target, 100 * endpoints, endpoints)  # warm up
                    base, ours = [], []
                    for _ in range(rounds):
                        base.append(await baseline(url, deliveries, PER_ENDPOINT * endpoints))
                        ours.append(await keystile_round(bench_target, deliveries, endpoints))
                    results[f"{shape} ({label})"] = {
                        "keystile_per_s": statistics.median(ours),
                        "baseline_per_s": statistics.median(base),
                        "ratio": statistics.median(o / b for o, b in zip(ours, base, strict=True)),
                    }
    info = machine()
    load = os.getloadavg()[0]
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}; load {load:.2f}")
    print(f"{deliveries} deliveries a round, median of {rounds} rounds")
    print(f"{'case':<40} {'keystile/s':>11} {'httpx alone/s':>14} {'ratio':>6}")
    for name, row in results.items():
        print(f"{name:<40} {row['keystile_per_s']:>11.0f} {row['baseline_per_s']:>14.0f} {row['ratio']:>6.2f}")
    print(json.dumps({"bench": "webhooks", "machine": info, "unit": "deliveries/s", "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
