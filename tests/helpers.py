"""Small helpers shared by tests: log in, issue a key, read the database, move fake clocks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import event, func, select, update

from keystile.audit.models import AuditEvent
from keystile.clock import FakeClock
from keystile.instance import Keystile
from keystile.keys import format as key_format
from keystile.keys.models import ApiKey
from keystile.keys.records import RECORD_QUERY
from keystile.users.models import User
from keystile.users.passwords import Passwords

PASSWORD = "correct horse battery staple"
EXPORT = "/data/export"
# Real Argon2id at its lowest cost, for apps built in the test process.
CHEAP_PASSWORDS = Passwords(PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),)))
INVALID_KEY = {"detail": "Invalid or expired API key"}

# The fields of a key as POST /keys/ returns it (raw key included), and as every later read returns it.
CREATED_FIELDS = {
    "id",
    "key",
    "hint",
    "name",
    "scopes",
    "created_at",
    "expires_at",
    "rate_limit",
    "quota_remaining",
    "ip_allowlist",
    "metadata",
    "is_active",
    "enabled",
    "identity_id",
    "quota_refill",
    "quota_refilled_at",
}
READ_FIELDS = (CREATED_FIELDS - {"key"}) | {"last_used_at", "use_count", "revoked_at", "rotated_from"}
# The fields of every answer of POST /v1/keys/verify.
VERIFY_FIELDS = {
    "valid",
    "code",
    "api_key_id",
    "owner_id",
    "name",
    "scopes",
    "metadata",
    "expires_at",
    "ratelimit",
    "quota_remaining",
    "identity",
}


class KeystileClient(httpx.AsyncClient):
    """An httpx client bound to one in-process keystile app, with its instance at hand for state assertions."""

    keystile: Keystile


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


async def make_admin(client: KeystileClient, email: str, *, is_admin: bool = True) -> None:
    """Set the admin flag of `email` (`is_admin=False` clears it)."""
    async with client.keystile.session_factory() as session:
        await session.execute(update(User).where(User.email == email).values(is_admin=is_admin))
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


def key_header(created: dict[str, Any]) -> dict[str, str]:
    """The X-API-Key header for a key as `create_key` returned it."""
    return {"X-API-Key": created["key"]}


async def verify(client: httpx.AsyncClient, caller: dict[str, str], key: str, **fields: Any) -> dict[str, Any]:
    """Call the verify endpoint as `caller`; a well-formed call is always 200."""
    response = await client.post("/v1/keys/verify", json={"key": key, **fields}, headers=caller)
    assert response.status_code == 200, response.text
    body = dict(response.json())
    assert set(body) == VERIFY_FIELDS
    return body


# The states in which a key can no longer be rotated, for `make_unrotatable`.
UNROTATABLE = [
    pytest.param("revoked", id="revoked"),
    pytest.param("expired", id="expired"),
    pytest.param("rotated", id="already-rotated"),
    pytest.param("rotation-grace-over", id="rotated-and-grace-over"),
]


async def make_unrotatable(
    client: httpx.AsyncClient, clock: FakeClock, headers: dict[str, str], key: dict[str, Any], how: str
) -> None:
    """Bring `key` (issued with an expiry more than 120 s away) into a state that forbids rotating it."""
    if how == "revoked":
        assert (await client.post(f"/keys/{key['id']}/revoke", headers=headers)).status_code == 200
    elif how == "expired":
        clock.advance((parse_time(key["expires_at"]) - clock.now).total_seconds())
    else:
        grace = {"grace_seconds": 120}
        assert (await client.post(f"/keys/{key['id']}/rotate", json=grace, headers=headers)).status_code == 201
        if how == "rotation-grace-over":
            clock.advance(120)


@contextlib.contextmanager
def recorded_statements(keystile: Keystile) -> Iterator[list[str]]:
    """Every SQL statement `keystile` sends while the block runs (to prove that something does, or does not, touch
    the database): those of its engine, and the key loader's reads, which on PostgreSQL go to the driver directly
    (keys/loader.py) and are added, as the SELECT they are, when the block ends."""
    statements: list[str] = []
    engine, loader = keystile.engine, keystile.verifier.load
    driver_reads = loader.driver_reads

    def before_cursor_execute(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
        statements += [str(RECORD_QUERY)] * (loader.driver_reads - driver_reads)


async def stored_key(client: KeystileClient, pk: int) -> ApiKey:
    async with client.keystile.session_factory() as session:
        row = await session.get(ApiKey, pk)
    assert row is not None
    return row


async def stored_quota(client: KeystileClient, api_key_id: int) -> int | None:
    """The `quota_remaining` column of a key's row (below the true balance while this process holds a lease)."""
    async with client.keystile.session_factory() as session:
        return await session.scalar(select(ApiKey.quota_remaining).where(ApiKey.id == api_key_id))


async def users_in_db(client: KeystileClient) -> list[User]:
    async with client.keystile.session_factory() as session:
        return list((await session.scalars(select(User).order_by(User.id))).all())


async def key_count(client: KeystileClient) -> int:
    async with client.keystile.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)


def row_values(row: ApiKey) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in ApiKey.__mapper__.column_attrs}


async def database_snapshot(client: KeystileClient) -> dict[str, list[dict[str, Any]]]:
    """Every row of the users, keys and audit tables, after writing out any buffered usage."""
    await client.keystile.usage.flush()
    snapshot: dict[str, list[dict[str, Any]]] = {}
    async with client.keystile.session_factory() as session:
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
