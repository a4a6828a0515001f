"""A private redis-server for the key tests that stop Redis, so the shared one other tests use is never disturbed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import backends
from tests.ratelimit.conftest import RedisServer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        backends.unavailable("redis-server", FileNotFoundError("redis-server is not on PATH"))
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
