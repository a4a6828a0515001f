"""Waiting for what a keystile instance does in the background (its subscription, its key_id index)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

WAIT_SECONDS = 5.0
POLL_SECONDS = 0.01


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds, or fail the test after WAIT_SECONDS."""
    for _ in range(int(WAIT_SECONDS / POLL_SECONDS)):
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)
    pytest.fail(f"not true within {WAIT_SECONDS} s")
