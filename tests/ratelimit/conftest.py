"""A private `redis-server` for tests that stop Redis, so the shared Redis other tests use is never disturbed."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests import backends
from tests.process import free_port

READY_SECONDS = 10.0


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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        backends.unavailable("redis-server", FileNotFoundError("redis-server is not on PATH"))
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
