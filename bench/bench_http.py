"""HTTP throughput of a key-authenticated route against an unauthenticated route of the same server.

    .venv/bin/python bench/bench_http.py [--seconds 5] [--rounds 3] [--workers-only]

Serves keystile's app exactly as `keystile serve` does (migrated SQLite database, uvicorn with the same options, one
worker) and loads it with `wrk` (install it with `apt-get install -y wrk`): `GET /data/export` with a valid key whose
rate limit (1e9/60) never triggers, against `GET /healthz`; and the same route with a key of an identity (API.md
section 8) whose limit, like the key's own, never triggers, so each request passes two counters (on Redis, in one
script call). The app also carries the reference routes of bench/http_app.py (a no-op dependency; the same plus one
Redis PING), measured alongside to show the ceiling the targets must fit under. Rounds alternate the routes so that
noise from other work on the machine hits all alike; the figures are medians over rounds. Run twice: rate limits in
the process, then in Redis (`KEYSTILE_BENCH_REDIS_URL`, default database 14 on localhost, flushed first).

Then, with Redis limits, the scaling of `keystile serve --workers N` itself: `GET /data/export` served by one worker
and by two, both servers up at once (same database, same Redis) and measured in alternating rounds. The machine has
two cores and `wrk -t1` needs part of one: the figures include how much (`wrk CPU`) and how busy the machine was.
`--workers-only` runs this comparison alone.

Targets (issue "Performance II"): `/data/export` at least 90 % of the no-op-dependency reference route with in-process
limits (what any route authenticating through a FastAPI dependency can reach) and at least 75 % of `/healthz` with
Redis limits; `POST /v1/keys/verify` at least 60 % of `/healthz` in process, 50 % with Redis; two workers at least
1.6 x one worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench_verify import SECRET_KEY, machine

KEYSTILE = Path(sys.executable).with_name("keystile")
BENCH_DIR = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("KEYSTILE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
NO_OP_DEPENDENCY = "reference: no-op dependency (last route)"
NO_OP_FIRST = "reference: no-op dependency (first route)"
# Per mode: the route `/data/export` is compared with, and the least ratio to it.
TARGETS = {"in-process": (NO_OP_DEPENDENCY, 0.90), "redis": ("GET /healthz (no auth)", 0.75)}
VERIFY_TARGETS = {"in-process": 0.60, "redis": 0.50}
WORKERS_TARGET = 1.6
CONNECTIONS = 16
PASSWORD = "bench-password-123"


class Server:
    """bench/http_app.py served like `keystile serve` on a free port, or with `workers`, `keystile serve --workers
    <workers>` itself (keystile's own routes only); stopped with SIGTERM like any deployment."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int | None = None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = os.environ | {"KEYSTILE_LOG_LEVEL": "warning", "KEYSTILE_SECRET_KEY": SECRET_KEY} | env
        subprocess.run([str(KEYSTILE), "migrate"], env=env, check=True, capture_output=True)
        serve = (
            "import uvicorn; from keystile.cli import SERVE_OPTIONS; "
            f"uvicorn.run('http_app:create', port={self.port}, workers=1, log_level='warning', **SERVE_OPTIONS)"
        )
        command = [sys.executable, "-c", serve]
        if workers is not None:
            command = [str(KEYSTILE), "serve", "--port", str(self.port), "--workers", str(workers)]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=env | {"PYTHONPATH": str(BENCH_DIR)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"keystile serve exited:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"keystile serve not ready in 60 s:\n{log_path.read_text()}")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server process and its workers (/proc)."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError):  # a process that ended meanwhile
                pid, rest = stat.read_text().split(" ", 1)
                fields = rest.rsplit(")", 1)[1].split()
                if self.process.pid in (int(pid), int(fields[1])):
                    ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def issue_keys(url: str) -> tuple[str, str, str]:
    """A key to present, a caller key holding `keys:verify` for the verify route, and a key of an identity (its own
    limit and the identity's); none ever rate limited."""
    with httpx.Client(base_url=url, timeout=10) as http:
        http.post("/auth/register", json={"email": "bench@example.com", "password": PASSWORD}).raise_for_status()
        token = http.post("/auth/token", data={"username": "bench@example.com", "password": PASSWORD})
        token.raise_for_status()
        created = http.post(
            "/keys/",
            json={"name": "bench", "rate_limit": {"limit": 1_000_000_000, "window_seconds": 60}},
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
        created.raise_for_status()
        key = str(created.json()["key"])
        check = http.get("/data/export", headers={"X-API-Key": key})
        if check.status_code != 200 or "RateLimit" not in check.headers:
            raise SystemExit(f"setup error: /data/export answered {check.status_code} {check.headers}")
        caller = http.post(
            "/keys/",
            json={
                "name": "gateway",
                "scopes": ["keys:verify"],
                "rate_limit": {"limit": 1_000_000_000, "window_seconds": 60},
            },
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
        caller.raise_for_status()
        verifier = str(caller.json()["key"])
        answer = http.post("/v1/keys/verify", json={"key": key}, headers={"X-API-Key": verifier})
        if answer.status_code != 200 or answer.json()["code"] != "VALID":
            raise SystemExit(f"setup error: verify answered {answer.status_code} {answer.text}")
        return key, verifier, issue_identity_key(http, token.json()["access_token"])


def issue_identity_key(http: httpx.Client, token: str) -> str:
    """A key of an identity, both with a rate limit that never triggers: every request passes two counters."""
    never = {"limit": 1_000_000_000, "window_seconds": 60}
    bearer = {"Authorization": f"Bearer {token}"}
    identity = http.post("/identities", json={"external_id": "bench-customer", "rate_limit": never}, headers=bearer)
    identity.raise_for_status()
    created = http.post(
        "/keys/", json={"name": "customer", "rate_limit": never, "identity_id": identity.json()["id"]}, headers=bearer
    )
    created.raise_for_status()
    key = str(created.json()["key"])
    check = http.get("/data/export", headers={"X-API-Key": key})
    if check.status_code != 200 or '"identity";q=' not in check.headers.get("RateLimit-Policy", ""):
        raise SystemExit(f"setup error: /data/export with an identity key answered {check.status_code} {check.headers}")
    return key


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _millis(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def machine_busy() -> tuple[int, int]:
    """CPU time of the whole machine so far, (busy, total) in clock ticks (/proc/stat; idle and iowait are not busy)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def wrk(url: str, seconds: int, headers: dict[str, str] | None = None, body: str | None = None) -> dict[str, float]:
    """One wrk run: GET, or POST of the JSON `body` (wrk takes a request body only from a Lua script). Also the CPU wrk
    itself used (in cores) and how busy the machine was meanwhile (0-1), for the multi-worker comparison."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body is not None:
            script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n')
            script.write('wrk.headers["Content-Type"] = "application/json"\n')
    if body is not None:
        command += ["-s", script.name]
    before, busy_before = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy()
    started = time.monotonic()
    try:
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    elapsed = time.monotonic() - started
    after, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy()
    wrk_cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / elapsed
    machine = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw non-2xx answers from {url}:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _millis(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _millis(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "wrk_cpu": wrk_cpu, "machine_busy": machine}


UNAUTHENTICATED = "GET /healthz (no auth)"
AUTHENTICATED = "GET /data/export (API key)"
IDENTITY = "GET /data/export (identity key)"
VERIFY = "POST /v1/keys/verify (caller + target key)"


def run_mode(mode: str, env: dict[str, str], seconds: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        env = env | {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{directory}/keystile.db"}
        server = Server(env, Path(directory) / "server.log")
        try:
            key, verifier, identity_key = issue_keys(server.url)
            routes: dict[str, tuple[str, dict[str, str] | None, str | None]] = {
                UNAUTHENTICATED: (f"{server.url}/healthz", None, None),
                AUTHENTICATED: (f"{server.url}/data/export", {"X-API-Key": key}, None),
                IDENTITY: (f"{server.url}/data/export", {"X-API-Key": identity_key}, None),
                VERIFY: (f"{server.url}/v1/keys/verify", {"X-API-Key": verifier}, json.dumps({"key": key})),
                NO_OP_DEPENDENCY: (f"{server.url}/bench/dependency", None, None),
                NO_OP_FIRST: (f"{server.url}/bench/dependency-first", None, None),
            }
            if mode == "redis":
                routes["reference: no-op dependency + Redis PING"] = (f"{server.url}/bench/redis", None, None)
            for url, headers, body in routes.values():
                wrk(url, 2, headers, body)  # warm up: caches, connection pools, branch predictors
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in routes}
            for _ in range(rounds):
                for name, (url, headers, body) in routes.items():
                    samples[name].append(wrk(url, seconds, headers, body))
        finally:
            server.stop()
    result: dict[str, dict[str, Any]] = {
        name: {metric: statistics.median(run[metric] for run in runs) for metric in ("rps", "p50_ms", "p99_ms")}
        for name, runs in samples.items()
    }
    for name, runs in samples.items():
        result[name]["rps_rounds"] = [round(run["rps"]) for run in runs]
        # Per round, against the unauthenticated route of the same round; the median of those.
        ratios = (run["rps"] / base["rps"] for run, base in zip(runs, samples[UNAUTHENTICATED], strict=True))
        result[name]["ratio"] = round(statistics.median(ratios), 3)
    against, min_ratio = TARGETS[mode]
    ratio = _export_ratio(samples, against)
    verify_ratio = result[VERIFY]["ratio"]
    return {
        "routes": result,
        "ratio": round(ratio, 3),
        "against": against,
        "ratio_to_first_route": round(_export_ratio(samples, NO_OP_FIRST), 3),
        "min_ratio": min_ratio,
        "pass": ratio >= min_ratio,
        "verify_ratio": verify_ratio,
        "verify_min_ratio": VERIFY_TARGETS[mode],
        "verify_pass": verify_ratio >= VERIFY_TARGETS[mode],
    }


def _export_ratio(samples: dict[str, list[dict[str, float]]], against: str) -> float:
    """`/data/export`'s req/s over the `against` route's, per round; the median of those."""
    return statistics.median(
        run["rps"] / base["rps"] for run, base in zip(samples[AUTHENTICATED], samples[against], strict=True)
    )


def run_workers(seconds: int, rounds: int) -> dict[str, Any]:
    """`GET /data/export` with Redis limits from `keystile serve --workers 1` and `--workers 2`, in alternating rounds;
    the ratio is the median over rounds of two workers' req/s over one worker's in the same round."""
    counts = (1, 2)
    load_before = os.getloadavg()[0]  # anything else running would take the second core from the second worker
    env = {"KEYSTILE_REDIS_URL": REDIS_URL, "KEYSTILE_LOG_LEVEL": "warning", "KEYSTILE_SECRET_KEY": SECRET_KEY}
    with tempfile.TemporaryDirectory() as directory:
        env |= {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{directory}/keystile.db"}
        servers: list[Server] = []
        try:
            for workers in counts:  # one after the other: the first creates the database, the second finds it
                servers.append(Server(env, Path(directory) / f"server-{workers}.log", workers=workers))
            key, _, _ = issue_keys(servers[0].url)  # one database, one Redis: the key works on both
            for server in servers:
                wrk(f"{server.url}/data/export", 3, {"X-API-Key": key})  # warm up every worker
            samples: dict[int, list[dict[str, float]]] = {workers: [] for workers in counts}
            for _ in range(rounds):
                for workers, server in zip(counts, servers, strict=True):
                    cpu = server.cpu_seconds()
                    run = wrk(f"{server.url}/data/export", seconds, {"X-API-Key": key})
                    samples[workers].append(run | {"server_cpu": (server.cpu_seconds() - cpu) / seconds})
        finally:
            for server in servers:
                server.stop()
    figures = {
        workers: {metric: statistics.median(run[metric] for run in runs) for metric in runs[0]}
        | {"rps_rounds": [round(run["rps"]) for run in runs]}
        for workers, runs in samples.items()
    }
    ratio = statistics.median(two["rps"] / one["rps"] for one, two in zip(samples[1], samples[2], strict=True))
    return {
        "route": "GET /data/export (API key, Redis limits)",
        "workers": figures,
        "ratio": round(ratio, 3),
        "load_average_before": load_before,
        "min_ratio": WORKERS_TARGET,
        "pass": ratio >= WORKERS_TARGET,
    }


def print_workers(outcome: dict[str, Any]) -> None:
    columns = f"{'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'server CPU':>10} {'wrk CPU':>8} {'machine':>8}"
    print(f"{'workers':<8} {'route':<42} {columns}")
    for workers, figures in outcome["workers"].items():
        print(
            f"{workers:<8} {outcome['route']:<42} {figures['rps']:>7.0f} {figures['p50_ms']:>7.2f}"
            f" {figures['p99_ms']:>7.2f} {figures['server_cpu']:>10.0%} {figures['wrk_cpu']:>8.0%}"
            f" {figures['machine_busy']:>8.0%}"
        )
    load = outcome["load_average_before"]
    print(f"CPU in % of one core; machine: busy share of all cores, every process; load average before: {load:.2f}")
    verdict = "PASS" if outcome["pass"] else "FAIL"
    print(f"2 workers / 1 worker = {outcome['ratio']:.2f} x (target >= {outcome['min_ratio']} x) {verdict}")


def redis_available() -> bool:
    import redis

    try:
        connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        connection.flushdb()
        connection.close()
    except redis.RedisError as error:
        print(f"Redis skipped: {error!r}", file=sys.stderr)
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per route")
    parser.add_argument("--workers-only", action="store_true", help="only 1 worker vs 2 workers (Redis limits)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (Debian/Ubuntu) or see github.com/wg/wrk")

    modes: dict[str, Any] = {}
    if not args.workers_only:
        modes["in-process"] = run_mode("in-process", {"KEYSTILE_REDIS_URL": ""}, args.seconds, args.rounds)
    workers = None
    if redis_available():
        if not args.workers_only:
            modes["redis"] = run_mode("redis", {"KEYSTILE_REDIS_URL": REDIS_URL}, args.seconds, args.rounds)
        redis_available()  # flushed again: the worker comparison starts from an empty Redis too
        workers = run_workers(args.seconds, args.rounds)

    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}; wrk -t1 -c{CONNECTIONS}")
    if modes:
        print(f"{'limits':<11} {'route':<42} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'vs /healthz':>11}")
    for mode, outcome in modes.items():
        for route, figures in outcome["routes"].items():
            print(
                f"{mode:<11} {route:<42} {figures['rps']:>7.0f} {figures['p50_ms']:>7.2f} {figures['p99_ms']:>7.2f}"
                f" {figures['ratio']:>11.1%}"
            )
        verdict = "PASS" if outcome["pass"] else "FAIL"
        target = f"(target >= {outcome['min_ratio']:.0%}) {verdict}"
        print(f"{mode:<11} /data/export / {outcome['against']} = {outcome['ratio']:.1%} {target}")
        print(f"{mode:<11} /data/export / {NO_OP_FIRST} = {outcome['ratio_to_first_route']:.1%} (no target)")
        verdict = "PASS" if outcome["verify_pass"] else "FAIL"
        target = f"(target >= {outcome['verify_min_ratio']:.0%}) {verdict}"
        print(f"{mode:<11} verify / unauthenticated = {outcome['verify_ratio']:.1%} {target}")
    if workers is not None:
        print_workers(workers)
    summary = {"bench": "http", "machine": info, "connections": CONNECTIONS, "modes": modes, "workers": workers}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
