"""A key's first `POST /v1/keys/verify` (a cache miss: one database read) against its second (a cache hit), over HTTP
on PostgreSQL, one request at a time over one keep-alive connection, as a gateway that sees each key rarely does.

    .venv/bin/python bench/bench_first_use.py [--keys 300] [--redis]

Serves keystile like `keystile serve` (bench_http.Server) on a fresh PostgreSQL database (`KEYSTILE_BENCH_POSTGRES_URL`,
default database keystile_bench_first on localhost, dropped and created), issues the keys, then restarts the server so
that no key is cached, and verifies each key twice in a row. With `--redis` the server also uses Redis (limits, the
key-change channel and the key_id index). Prints the medians and the ratio first/second. Target: <= 1.3 x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench_http import PASSWORD, REDIS_URL, Server, redis_available
from bench_verify import machine

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/keystile_bench_first"
TARGET = 1.3
NEVER = {"limit": 1_000_000_000, "window_seconds": 60}


async def fresh_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(url.replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres")
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def issue(url: str, count: int) -> tuple[str, list[str]]:
    """A caller key holding `keys:verify`, and `count` keys to verify; none ever rate limited."""
    with httpx.Client(base_url=url, timeout=30) as http:
        http.post("/auth/register", json={"email": "bench@example.com", "password": PASSWORD}).raise_for_status()
        token = http.post("/auth/token", data={"username": "bench@example.com", "password": PASSWORD})
        bearer = {"Authorization": f"Bearer {token.raise_for_status().json()['access_token']}"}
        caller = http.post(
            "/keys/", json={"name": "gateway", "scopes": ["keys:verify"], "rate_limit": NEVER}, headers=bearer
        )
        keys = [
            http.post("/keys/", json={"name": f"k{i}", "rate_limit": NEVER}, headers=bearer).raise_for_status()
            for i in range(count)
        ]
        return str(caller.raise_for_status().json()["key"]), [str(k.json()["key"]) for k in keys]


def measure(url: str, caller: str, keys: list[str]) -> dict[str, float]:
    """Per key: the first verify and the second, timed on one keep-alive connection; medians in us."""
    first, second, healthz = [], [], []
    headers = {"X-API-Key": caller, "Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(50):  # warm up: the connection, the caller key's cache entry, the pools
            http.get("/healthz")
            http.post("/v1/keys/verify", content=json.dumps({"key": caller}), headers=headers)
        for key in keys:
            body = json.dumps({"key": key})
            for series in (first, second):
                started = time.perf_counter()
                answer = http.post("/v1/keys/verify", content=body, headers=headers)
                series.append(time.perf_counter() - started)
                if answer.status_code != 200 or answer.json()["code"] != "VALID":
                    raise SystemExit(f"verify answered {answer.status_code} {answer.text}")
            started = time.perf_counter()
            http.get("/healthz").raise_for_status()
            healthz.append(time.perf_counter() - started)
    return {
        "first_us": statistics.median(first) * 1e6,
        "second_us": statistics.median(second) * 1e6,
        "healthz_us": statistics.median(healthz) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=300, help="keys, each verified twice")
    parser.add_argument("--redis", action="store_true", help="serve with Redis too")
    args = parser.parse_args()
    url = POSTGRES_URL
    asyncio.run(fresh_database(url))
    env = {"KEYSTILE_DATABASE_URL": url, "KEYSTILE_REDIS_URL": ""}
    if args.redis:
        if not redis_available():
            raise SystemExit("Redis is not reachable")
        env["KEYSTILE_REDIS_URL"] = REDIS_URL
    with tempfile.TemporaryDirectory() as directory:
        server = Server(env, Path(directory) / "issue.log")
        try:
            caller, keys = issue(server.url, args.keys)
        finally:
            server.stop()
        server = Server(env, Path(directory) / "measure.log")  # a fresh process: nothing cached
        try:
            figures = measure(server.url, caller, keys)
        finally:
            server.stop()
    ratio = figures["first_us"] / figures["second_us"]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    info = machine()
    mode = "PostgreSQL + Redis" if args.redis else "PostgreSQL"
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}; {mode}; {len(keys)} keys")
    print(f"first verify (cache miss)   {figures['first_us']:8.0f} us")
    print(f"second verify (cache hit)   {figures['second_us']:8.0f} us")
    print(f"GET /healthz                {figures['healthz_us']:8.0f} us")
    print(f"first / second = {ratio:.2f} x (target <= {TARGET} x) {verdict}")
    summary = {"bench": "first_use", "machine": info, "mode": mode, "keys": len(keys), **figures}
    print(json.dumps(summary | {"ratio": round(ratio, 3), "max_ratio": TARGET, "pass": ratio <= TARGET}))


if __name__ == "__main__":
    main()
