"""Private Redis servers: one `redis-server` for tests that stop Redis, so the shared Redis other tests use is never
disturbed, and a three-master Redis Cluster for the cluster tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from tests import backends
from tests.process import free_port

READY_SECONDS = 10.0


class CountingRedis(redis.asyncio.Redis):
    """Counts script calls, i.e. round trips of decisions."""

    script_calls = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] in ("EVALSHA", "EVAL"):
            self.script_calls += 1
        return await super().execute_command(*args, **options)


class RedisServer:
    """A private `redis-server` without persistence, restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*command, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + READY_SECONDS
        with redis.Redis.from_url(self.url, socket_connect_timeout=0.2) as connection:
            while time.monotonic() < deadline:
                try:
                    if connection.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.02)  # readiness polling of a child process, bounded by the deadline above
        pytest.fail(f"redis-server on port {self.port} was not ready within {READY_SECONDS} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class RedisClusterServers:
    """Three `redis-server --cluster-enabled yes` masters on free ports, joined by `redis-cli --cluster create`."""

    SIZE = 3

    def __init__(self, workdir: Path) -> None:
        self.ports = [free_port() for _ in range(self.SIZE)]
        self.urls = [f"redis://127.0.0.1:{port}/0" for port in self.ports]
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for port in self.ports:
            self.processes.append(subprocess.Popen(self._server_command(port), stdout=subprocess.DEVNULL))
        for url in self.urls:
            _wait_for(url, lambda connection: bool(connection.ping()))
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=READY_SECONDS,
        )
        for url in self.urls:  # every node must see every slot served before a test may rely on it
            _wait_for(url, lambda connection: connection.execute_command("CLUSTER INFO")["cluster_state"] == "ok")

    def _server_command(self, port: int) -> list[str]:
        # The cluster bus gets its own free port: the default (port + 10000) may be taken or out of range.
        return [
            "redis-server",
            *("--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1"),
            *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
        ]

    def flush(self) -> None:
        for url in self.urls:
            with redis.Redis.from_url(url) as connection:
                connection.flushall()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            process.wait(timeout=10)
        self.processes = []


def _wait_for(url: str, ready: Callable[[redis.Redis], bool]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    with redis.Redis.from_url(url, socket_connect_timeout=0.2) as connection:
        while time.monotonic() < deadline:
            try:
                if ready(connection):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.02)  # readiness polling of child processes, bounded by the deadline above
    pytest.fail(f"{url} was not ready within {READY_SECONDS} s")


def _require(program: str) -> None:
    if shutil.which(program) is None:
        backends.unavailable(program, FileNotFoundError(f"{program} is not on PATH"))


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """One cluster per test module (starting one takes about a second); each test starts with it flushed."""
    _require("redis-server")
    _require("redis-cli")
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> RedisClusterServers:
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    _require("redis-server")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
