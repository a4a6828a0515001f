"""Small helpers shared by tests: log in, issue a key, read the database, move fake clocks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keystile.audit.models import AuditEvent
from keystile.clock import FakeClock
from keystile.keys import format as key_format
from keystile.keys.models import ApiKey
from keystile.runtime import Keystile
from keystile.users.models import User

PASSWORD = "correct horse battery staple"
INVALID_KEY = {"detail": "Invalid or expired API key"}


class KeystileClient(httpx.AsyncClient):
    """An httpx client bound to one in-process keystile app, with its runtime at hand for state assertions."""

    runtime: Keystile


async def register(
    client: httpx.AsyncClient, email: str = "alice@example.com", password: str = PASSWORD
) -> dict[str, Any]:
    response = await client.post("/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def login(
    client: httpx.AsyncClient, email: str = "alice@example.com", password: str = PASSWORD
) -> dict[str, str]:
    response = await client.post("/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def user_headers(client: httpx.AsyncClient, email: str = "alice@example.com") -> dict[str, str]:
    """Register `email` and return its Authorization header."""
    await register(client, email)
    return await login(client, email)


async def make_admin(client: KeystileClient, email: str) -> None:
    async with client.runtime.session_factory() as session:
        await session.execute(update(User).where(User.email == email).values(is_admin=True))
        await session.commit()


async def admin_headers(client: KeystileClient, email: str = "admin@example.com") -> dict[str, str]:
    """Register `email`, make it an admin and return its Authorization header (admin rights are read per request)."""
    headers = await user_headers(client, email)
    await make_admin(client, email)
    return headers


async def create_key(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    """Issue a key with a JSON body (name defaults to "test-key"); return the creation response, raw key included."""
    body.setdefault("name", "test-key")
    response = await client.post("/keys/", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


@contextlib.contextmanager
def recorded_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement `engine` sends while the block runs (to prove that something does, or does not, touch the
    database)."""
    statements: list[str] = []

    def before_cursor_execute(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before_cursor_execute)


async def stored_key(client: KeystileClient, pk: int) -> ApiKey:
    async with client.runtime.session_factory() as session:
        row = await session.get(ApiKey, pk)
    assert row is not None
    return row


async def key_count(client: KeystileClient) -> int:
    async with client.runtime.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)


def row_values(row: ApiKey) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in ApiKey.__mapper__.column_attrs}


async def database_snapshot(client: KeystileClient) -> dict[str, list[dict[str, Any]]]:
    """Every row of the users, keys and audit tables, after writing out any buffered usage."""
    await client.runtime.usage.flush()
    snapshot: dict[str, list[dict[str, Any]]] = {}
    async with client.runtime.session_factory() as session:
        for model in (User, ApiKey, AuditEvent):
            rows = (await session.scalars(select(model).order_by(model.id))).all()
            attributes = [column.key for column in model.__mapper__.column_attrs]
            snapshot[model.__tablename__] = [{name: getattr(row, name) for name in attributes} for row in rows]
    return snapshot


def parse_time(value: str) -> datetime:
    """A timestamp of a JSON response ("Z" or an offset)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def with_checksum(body: str) -> str:
    return body + key_format.checksum(body)


def wrong_checksum(key: str) -> str:
    """`key` with its last checksum character changed."""
    return key[:-1] + ("0" if key[-1] != "0" else "1")


def align(clock: FakeClock, window_seconds: int) -> None:
    """Move the clock forward to the start of a window (windows are aligned to multiples of their length)."""
    seconds = int(clock().timestamp())
    clock.advance(window_seconds - seconds % window_seconds)


class FakeMonotonic:
    """A `time.monotonic` stand-in that moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now
