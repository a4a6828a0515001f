"""Small helpers shared by tests: log in, issue a key, read the database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from keystile.runtime import Keystile

PASSWORD = "correct horse battery staple"


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
    from sqlalchemy import update

    from keystile.users.models import User

    async with client.runtime.session_factory() as session:
        await session.execute(update(User).where(User.email == email).values(is_admin=True))
        await session.commit()


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
