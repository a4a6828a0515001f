"""No raw key, secret key or password anywhere it should not be: logs, responses, tables, reprs."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from keystile.db import Base
from keystile.instance import Keystile
from keystile.keys import format as key_format
from keystile.keys.models import ApiKey
from keystile.keys.service import IssuedKey
from keystile.settings import Settings
from keystile.users.models import User
from keystile.users.schemas import UserCreate
from tests.conftest import MakeClient
from tests.helpers import (
    PASSWORD,
    KeystileClient,
    create_key,
    login,
    make_admin,
    register,
    user_headers,
    with_checksum,
)

SECRET_KEY = "a-deployment-secret-key-that-must-never-leak-0123456789"


def secret_part(raw: str) -> str:
    """The key's secret and checksum, minus the last 4 characters that the public hint shows."""
    return raw.rsplit("_", 1)[1][:-4]


async def dump_tables(client: KeystileClient) -> str:
    rows = []
    async with client.keystile.session_factory() as session:
        for table in Base.metadata.sorted_tables:
            rows.extend(repr(row) for row in (await session.execute(select(table))).all())
    return "\n".join(rows)


# The test's own HTTP client logs the URLs the test asked for; everything else was logged by the server side.
CLIENT_LOGGERS = ("httpx", "httpcore")


def server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if not record.name.startswith(CLIENT_LOGGERS)]


def log_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts += [formatter.format(record), repr(record.args), repr(record.msg)]
    return "\n".join(parts)


async def test_a_full_flow_leaks_neither_the_key_nor_the_password(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # SQLAlchemy pins its own loggers to WARNING; at DEBUG they print every statement with its parameters.
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    client = await make_client()
    seen: list[httpx.Response] = []

    async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await client.request(method, url, **kwargs)
        seen.append(response)
        return response

    await call("POST", "/auth/register", json={"email": "alice@example.com", "password": PASSWORD})
    await call("POST", "/auth/register", json={"email": "alice@example.com", "password": PASSWORD})
    await call("POST", "/auth/token", data={"username": "alice@example.com", "password": PASSWORD + "x"})
    await call("POST", "/auth/token", data={"username": "nobody@example.com", "password": PASSWORD})
    token = (await call("POST", "/auth/token", data={"username": "alice@example.com", "password": PASSWORD})).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    await call("GET", "/users/me", headers=headers)

    creation = await client.post("/keys/", json={"name": "export"}, headers=headers)
    assert creation.status_code == 201
    raw, key_pk = creation.json()["key"], creation.json()["id"]
    body = raw[: -key_format.CHECKSUM_LENGTH]
    prefix, key_id, secret = body.rsplit("_", 2)

    assert (await call("GET", "/data/export", headers={"X-API-Key": raw})).status_code == 200
    await call("GET", "/keys/", headers=headers)
    await call("GET", f"/keys/{key_pk}", headers=headers)
    await call("GET", f"/data/export?api_key={raw}")
    invalid_keys = [
        raw[:-1] + ("A" if raw[-1] != "A" else "B"),
        with_checksum(f"{prefix}_{key_id}_{secret[::-1]}"),
        key_format.generate_key(prefix).raw,
        raw + "\x00",
        raw[:-10],
    ]
    for invalid in invalid_keys:
        assert (await call("GET", "/data/export", headers={"X-API-Key": invalid})).status_code == 401
    await make_admin(client, "alice@example.com")
    admin = await login(client)
    verified = await call("POST", "/v1/keys/verify", json={"key": raw}, headers=admin)
    assert verified.json()["valid"] is True
    await call("GET", "/audit", headers=admin)
    assert (await call("POST", f"/keys/{key_pk}/revoke", headers=headers)).status_code == 200
    assert (await call("GET", "/data/export", headers={"X-API-Key": raw})).status_code == 401
    await call("POST", "/v1/keys/verify", json={"key": raw}, headers=admin)
    await call("POST", "/auth/register", json={"email": "bob@example.com", "password": PASSWORD + "y" * 200})
    await client.aclose()  # runs the shutdown flushes, which log too

    secrets = {"raw key": raw, "key secret": secret_part(raw), "password": PASSWORD}
    records = server_records(caplog)
    logs = log_text(records)
    tables = await dump_tables(client)
    stored_hash = key_format.hash_key(raw, client.keystile.pepper)
    assert "INSERT INTO api_keys" in logs, "the capture must include the key's write, or it proves nothing"
    assert stored_hash in logs, "statement parameters must be in the capture"
    assert stored_hash in tables, "the dump must hold the key's row"
    assert "alice@example.com" in tables
    for name, secret_value in secrets.items():
        assert secret_value not in logs, f"{name} in the logs"
        assert secret_value not in tables, f"{name} in the tables"
        for response in seen:
            shown = response.text + repr(response.headers.multi_items())
            assert secret_value not in shown, f"{name} in {response.request.method} {response.request.url.path}"
    assert raw in creation.text


async def test_key_listings_show_the_hint_and_never_the_key_or_its_hash(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    raw = created["key"]

    listing = await client.get("/keys/", headers=headers)
    single = await client.get(f"/keys/{created['id']}", headers=headers)

    stored_hash = key_format.hash_key(raw, client.keystile.pepper)
    for response in (listing, single):
        assert response.status_code == 200
        assert raw not in response.text
        assert secret_part(raw) not in response.text
        assert stored_hash not in response.text
        assert "key_hash" not in response.text
    assert single.json()["hint"] == key_format.hint_for(raw)
    assert "key" not in single.json()


async def test_the_stored_row_holds_only_the_peppered_hash(client: KeystileClient) -> None:
    headers = await user_headers(client)
    raw = (await create_key(client, headers))["key"]

    async with client.keystile.session_factory() as session:
        row = await session.scalar(select(ApiKey))
    assert row is not None
    assert row.key_hash == key_format.hash_key(raw, client.keystile.pepper)
    assert row.hash_scheme == key_format.HASH_SCHEME
    assert len(row.key_hash) == 64
    assert row.hint == key_format.hint_for(raw)


async def test_repr_of_key_rows_and_records_holds_no_key_or_hash(client: KeystileClient) -> None:
    headers = await user_headers(client)
    raw = (await create_key(client, headers))["key"]
    stored_hash = key_format.hash_key(raw, client.keystile.pepper)
    key_id = key_format.key_id_of(raw, "ks")
    assert key_id is not None

    async with client.keystile.session_factory() as session:
        row = await session.scalar(select(ApiKey))
        user = await session.scalar(select(User))
    assert row is not None
    assert user is not None
    record = await client.keystile.verifier.record(key_id)
    assert record is not None

    for shown in (repr(row), repr(record), str(record)):
        assert raw not in shown
        assert secret_part(raw) not in shown
        assert stored_hash not in shown
    assert user.password_hash not in repr(user)


def test_repr_of_a_new_key_and_an_issued_key_hides_the_raw_key() -> None:
    new_key = key_format.generate_key("ks")
    issued = IssuedKey(row=ApiKey(key_id=new_key.key_id, name="n"), raw=new_key.raw)

    for shown in (repr(new_key), str(new_key), repr(issued), str(issued)):
        assert new_key.raw not in shown
        assert secret_part(new_key.raw) not in shown
    assert new_key.key_id in repr(new_key)


def test_repr_of_settings_and_runtime_hides_the_secret_key() -> None:
    settings = Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key=SECRET_KEY)
    runtime = Keystile(settings)

    for shown in (repr(settings), str(settings), settings.model_dump_json(), repr(runtime), str(runtime)):
        assert SECRET_KEY not in shown
        assert runtime.pepper.hex() not in shown
    assert settings.resolved_secret_key() == SECRET_KEY


def test_repr_of_settings_hides_database_and_redis_passwords() -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://app:db-password-123@db.internal/keys",
        redis_url="redis://:redis-password-456@cache.internal:6379/0",
        secret_key=SECRET_KEY,
    )

    for shown in (repr(settings), str(settings)):
        assert "db-password-123" not in shown
        assert "redis-password-456" not in shown


def test_repr_of_a_registration_request_hides_the_password() -> None:
    request = UserCreate(email="alice@example.com", password=PASSWORD)

    assert PASSWORD not in repr(request)
    assert PASSWORD not in str(request)


async def test_a_percent_encoded_api_key_parameter_is_accepted_as_a_query_key(make_client: MakeClient) -> None:
    # Why keystile.logs.redact must decode parameter names (tests/test_logs.py): the server does accept the key
    # under the encoded name.
    client = await make_client(accept_query_key=True)
    raw = (await create_key(client, await user_headers(client)))["key"]

    response = await client.get(f"/data/export?api%5Fkey={raw}")

    assert response.status_code == 200


async def test_a_rejected_query_key_is_not_echoed_in_the_401(client: KeystileClient) -> None:
    raw = (await create_key(client, await user_headers(client)))["key"]

    response = await client.get(f"/data/export?api_key={raw}")

    assert response.status_code == 401
    assert raw not in response.text
    assert "query parameter keys are disabled" in response.json()["detail"]


async def test_a_login_422_does_not_echo_the_password(client: KeystileClient) -> None:
    await register(client)

    response = await client.post("/auth/token", data={"password": PASSWORD})

    assert response.status_code == 422
    assert PASSWORD not in response.text
