"""Cold verification (cache cleared each time) with 1,000 keys against 1,000,000 keys in PostgreSQL.

    .venv/bin/python bench/bench_scale.py [--keys 1000000]

Works in its own database (`keystile_bench`, dropped at the end; admin connection from
`KEYSTILE_BENCH_POSTGRES_ADMIN_URL`). A user gets 1,000 keys, of which 200 are real keys issued through the service
(the ones measured); the rest are rows bulk-inserted with `INSERT ... SELECT generate_series`, with unique key_ids
and hashes that no key matches. The measured keys are verified cold (`keystile.key_cache.clear()` before each one),
so every verification reads PostgreSQL; then the table grows to 1,000,000 rows, is analysed, and the same keys are
measured again, interleaved with 200 more real keys issued after the bulk load (at the end of the table and index).

Target: p50 at 1,000,000 keys at most 1.5 x the p50 at 1,000.

Then the key_id index (`keystile.keys.key_ids`) of the 1,000,000-row table: how long it takes to load it from
PostgreSQL as an instance does (streamed, in batches) and the longest the event loop waits meanwhile (also after
`gc.freeze()`, as `keystile serve` runs: the longest waits are full collections of the process's heap); the memory it
holds (tracemalloc, measured on a second build from the key_ids already in memory, so only the index is counted) and
the peak during a build; what a lookup of a made-up key_id costs. Target: at most 16 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterable

import asyncpg

from bench_verify import issue_keys, machine, made_up_keys, postgres_database, started_keystile
from keystile.instance import Keystile
from keystile.keys.key_ids import LOAD_BATCH, KeyIdIndex, stream_key_ids
from keystile.keys.records import Outcome

DATABASE = "keystile_bench"
MEASURED = 200
SMALL = 1_000
TARGET_RATIO = 1.5
MAX_INDEX_MB = 16.0

_BULK_INSERT = """
INSERT INTO api_keys (key_id, key_hash, hash_scheme, hint, name, user_id, is_active, created_at, use_count,
                      scopes, ip_allowlist, metadata)
SELECT 'b' || lpad(n::text, 11, '0'),
       md5(n::text) || md5('x' || n::text),
       'hmac-sha256-v1', 'ks_bulk', 'bulk-' || n, $1, true, now(), 0, '[]', '[]', '{}'
FROM generate_series($2::bigint, $3::bigint) AS n
"""


async def bulk_insert(url: str, start: int, stop: int) -> None:
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        user_id = await connection.fetchval("SELECT id FROM users WHERE email = 'bench@example.com'")
        await connection.execute(_BULK_INSERT, user_id, start, stop - 1)
        await connection.execute("ANALYZE api_keys")
    finally:
        await connection.close()


async def count_keys(url: str) -> int:
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return int(await connection.fetchval("SELECT count(*) FROM api_keys"))
    finally:
        await connection.close()


async def cold_p50(keystile: Keystile, keys: list[str], rounds: int) -> float:
    """Median microseconds of one verification with an empty cache, over `rounds` passes over `keys`."""
    samples = []
    for _ in range(rounds):
        for key in keys:
            keystile.key_cache.clear()
            start = time.perf_counter_ns()
            verification = await keystile.verifier.verify(key)
            samples.append((time.perf_counter_ns() - start) / 1000)
            if verification.outcome is not Outcome.VALID:
                raise SystemExit(f"setup error: a measured key verified as {verification.outcome}")
    return statistics.median(samples)


async def in_batches(key_ids: list[str]) -> AsyncIterator[Iterable[str]]:
    for start in range(0, len(key_ids), LOAD_BATCH):
        yield key_ids[start : start + LOAD_BATCH]


async def timed_load(keystile: Keystile) -> tuple[float, float]:
    """Seconds to load the index from the database, and the longest the event loop went without running meanwhile."""
    longest_pause = 0.0

    async def ticker() -> None:
        nonlocal longest_pause
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0)
            longest_pause = max(longest_pause, time.perf_counter() - before)

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    await KeyIdIndex.build(stream_key_ids(keystile.engine))
    load_seconds = time.perf_counter() - started
    ticking.cancel()
    return load_seconds, longest_pause


async def index_figures(keystile: Keystile) -> dict[str, float]:
    """The key_id index of the whole table: load time, memory held and peak, lookup cost (see the docstring)."""
    load_seconds, longest_pause = await timed_load(keystile)
    gc.freeze()  # as `keystile serve` does once started: a full collection then skips what startup built
    _, longest_pause_frozen = await timed_load(keystile)
    gc.unfreeze()
    key_ids = [key_id async for batch in stream_key_ids(keystile.engine) for key_id in batch]
    tracemalloc.start()
    try:
        index = await KeyIdIndex.build(in_batches(key_ids))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(key_id in index for key_id in key_ids[:: len(key_ids) // 1000 or 1])
    probes = [key[3:15] for key in made_up_keys(100_000)]  # their key_ids
    started = time.perf_counter()
    found = sum(key_id in index for key_id in probes)
    lookup_us = (time.perf_counter() - started) / len(probes) * 1e6
    return {
        "keys": len(index),
        "load_s": round(load_seconds, 2),
        "longest_pause_ms": round(longest_pause * 1000, 1),
        "longest_pause_ms_gc_frozen": round(longest_pause_frozen * 1000, 1),
        "held_mb": round(held / 1e6, 2),
        "peak_mb": round(peak / 1e6, 2),
        "bytes_per_key": round(held / len(index), 1),
        "lookup_us": round(lookup_us, 2),
        "false_positives": found,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="the large table size")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the measured keys")
    args = parser.parse_args()

    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(postgres_database(DATABASE))
        keystile = await started_keystile(stack, url)
        first = await issue_keys(keystile, MEASURED)
        await bulk_insert(url, 1, SMALL - MEASURED + 1)
        small_rows = await count_keys(url)
        await cold_p50(keystile, first, 1)  # warm the connection pool and PostgreSQL's buffers
        small_p50 = await cold_p50(keystile, first, args.rounds)

        started = time.monotonic()
        await bulk_insert(url, SMALL - MEASURED + 1, args.keys - 2 * MEASURED + 1)
        second = await issue_keys(keystile, MEASURED)
        load_seconds = time.monotonic() - started
        large_rows = await count_keys(url)
        both = [key for pair in zip(first, second, strict=True) for key in pair]
        await cold_p50(keystile, both, 1)
        large_p50 = await cold_p50(keystile, both, args.rounds)
        index = await index_figures(keystile)

    ratio = large_p50 / small_p50
    info = machine()
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}; bulk load {load_seconds:.1f} s")
    print(f"{'keys in api_keys':>18} {'cold p50 us':>12}")
    print(f"{small_rows:>18,} {small_p50:>12.1f}")
    print(f"{large_rows:>18,} {large_p50:>12.1f}")
    print(f"ratio {ratio:.2f} (target <= {TARGET_RATIO}) {verdict}")
    index_pass = index["held_mb"] <= MAX_INDEX_MB
    print(
        f"key_id index of {index['keys']:,.0f} keys: loaded in {index['load_s']} s (the event loop paused"
        f" {index['longest_pause_ms']} ms at most, {index['longest_pause_ms_gc_frozen']} ms after gc.freeze()),"
        f" holds {index['held_mb']} MB"
        f" ({index['bytes_per_key']} B/key; peak {index['peak_mb']} MB while building), lookup {index['lookup_us']} us,"
        f" {index['false_positives']:.0f} false positives in 100,000 made-up key_ids"
        f" (target <= {MAX_INDEX_MB:.0f} MB) {'PASS' if index_pass else 'FAIL'}"
    )
    print(
        json.dumps(
            {
                "bench": "scale",
                "machine": info,
                "unit": "us",
                "small": {"keys": small_rows, "cold_p50_us": round(small_p50, 1)},
                "large": {"keys": large_rows, "cold_p50_us": round(large_p50, 1)},
                "ratio": round(ratio, 3),
                "max_ratio": TARGET_RATIO,
                "pass": ratio <= TARGET_RATIO,
                "key_id_index": {**index, "max_mb": MAX_INDEX_MB, "pass": index_pass},
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
