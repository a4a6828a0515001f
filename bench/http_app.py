"""The app bench_http.py serves: keystile's own app, plus reference routes that measure what the targets leave room for.

- `GET /bench/dependency`: the handler of `/data/export` behind a dependency that does nothing but take the request.
  Its throughput against `/healthz` is the ceiling of ANY route that authenticates through a FastAPI dependency,
  which keystile's routes do (ARCHITECTURE.md: the service uses its own public dependency). It is the last route.
- `GET /bench/dependency-first`: the same, first in the routing table: what it costs with no route matching at all.
- `GET /bench/redis`: the same, plus one Redis `PING` through redis-py's asyncio client: the ceiling of a route that
  makes one Redis round trip per request the plain way (only with `KEYSTILE_REDIS_URL`).

These routes exist only in this benchmark; `keystile serve` never serves them.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import redis.asyncio as redis
from fastapi import Depends, FastAPI, Request

from keystile.app import create_served_app


async def nothing(request: Request) -> None:
    return None


def create() -> FastAPI:
    app = create_served_app()  # what `keystile serve` runs
    redis_url = os.environ.get("KEYSTILE_REDIS_URL")
    client = redis.Redis.from_url(redis_url) if redis_url else None

    @app.get("/bench/dependency")
    async def dependency_only(_: Annotated[None, Depends(nothing)]) -> dict[str, Any]:
        return {"owner": 1, "data": []}

    @app.get("/bench/redis")
    async def dependency_and_redis_ping(_: Annotated[None, Depends(nothing)]) -> dict[str, Any]:
        assert client is not None, "KEYSTILE_REDIS_URL is not set"
        await client.ping()
        return {"owner": 1, "data": []}

    @app.get("/bench/dependency-first")
    async def dependency_only_first(_: Annotated[None, Depends(nothing)]) -> dict[str, Any]:
        return {"owner": 1, "data": []}

    # The same reference twice: last in the routing table, where any route added to the app lands (as when the
    # targets were set), and first, ahead even of keystile's own gateway routes, so that it pays for no matching.
    first = app.router.routes.pop()
    app.router.routes.insert(0, first)
    return app
