"""Shared steps of the events tests: an app that delivers quickly, webhooks added over the API, waiting on state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.conftest import MakeClient
from tests.helpers import KeystileClient

DEADLINE_SECONDS = 15.0
# Receivers in tests listen on 127.0.0.1, which is private: allowed here, refused in the SSRF tests.
FAST_DELIVERY: dict[str, Any] = {
    "webhook_allow_private": True,
    "webhook_poll_seconds": 0.05,
    "webhook_retry_delays": [1.0, 1.0],
    "expiry_scan_seconds": 3600.0,  # scans run when a test calls them
}


async def delivering_client(make_client: MakeClient, **overrides: Any) -> KeystileClient:
    return await make_client(**(FAST_DELIVERY | overrides))


async def add_webhook(
    client: httpx.AsyncClient, headers: dict[str, str], url: str, events: list[str] | None = None, **body: Any
) -> dict[str, Any]:
    events = events or [
        "key.created",
        "key.updated",
        "key.revoked",
        "key.rotated",
        "key.expiring",
        "key.expired",
        "key.leaked",
    ]
    response = await client.post("/webhooks", json={"url": url, "events": events, **body}, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def eventually(check: Callable[[], Awaitable[Any]], within: float = DEADLINE_SECONDS) -> Any:
    """The first truthy result of `check`, polled until the deadline (state written by a background task)."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)  # polling a background task's database writes, bounded by the deadline


async def attempts(client: httpx.AsyncClient, headers: dict[str, str], webhook_id: int) -> list[dict[str, Any]]:
    response = await client.get(f"/webhooks/{webhook_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json())


async def attempts_at_least(
    client: httpx.AsyncClient, headers: dict[str, str], webhook_id: int, count: int
) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        rows = await attempts(client, headers, webhook_id)
        return rows if len(rows) >= count else None

    return list(await eventually(enough))
