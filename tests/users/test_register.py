from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from keystile.audit.models import AuditEvent
from tests.conftest import MakeClient
from tests.helpers import PASSWORD, KeystileClient, register, users_in_db


async def events_in_db(client: KeystileClient) -> list[AuditEvent]:
    async with client.keystile.session_factory() as session:
        return list((await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all())


async def test_register_returns_201_with_the_public_fields_only(client: KeystileClient, clock: Any) -> None:
    response = await client.post("/auth/register", json={"email": "alice@example.com", "password": PASSWORD})

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "email", "is_admin", "created_at"}
    assert body["email"] == "alice@example.com"
    assert body["is_admin"] is False
    assert isinstance(body["id"], int)
    assert datetime.fromisoformat(body["created_at"]) == clock()
    [user] = await users_in_db(client)
    assert user.id == body["id"]
    assert user.email == "alice@example.com"
    assert user.is_admin is False
    assert user.created_at == clock()


async def test_register_normalizes_the_email_to_lower_case(client: KeystileClient) -> None:
    response = await client.post("/auth/register", json={"email": "Alice.Smith@Example.COM", "password": PASSWORD})

    assert response.status_code == 201
    assert response.json()["email"] == "alice.smith@example.com"
    [user] = await users_in_db(client)
    assert user.email == "alice.smith@example.com"


async def test_register_stores_the_password_only_as_an_argon2id_hash(client: KeystileClient) -> None:
    await register(client)

    [user] = await users_in_db(client)
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


async def test_register_writes_a_user_registered_audit_event(client: KeystileClient, clock: Any) -> None:
    body = await register(client)

    [event] = await events_in_db(client)
    assert event.action == "user.registered"
    assert event.actor_id == body["id"]
    assert event.api_key_id is None
    assert event.at == clock()


@pytest.mark.parametrize(
    "second_email",
    [
        pytest.param("alice@example.com", id="same-case"),
        pytest.param("ALICE@EXAMPLE.COM", id="upper-case"),
        pytest.param("Alice@example.com", id="mixed-case"),
        pytest.param("ａｌｉｃｅ@example.com", id="full-width-look-alike"),
        pytest.param("alice@ｅｘａｍｐｌｅ.com", id="full-width-domain"),
    ],
)
async def test_registering_a_taken_email_is_409_and_writes_nothing(client: KeystileClient, second_email: str) -> None:
    first = await register(client)

    response = await client.post("/auth/register", json={"email": second_email, "password": "another password"})

    assert response.status_code == 409
    assert response.json() == {"detail": "Email already registered"}
    users = await users_in_db(client)
    assert [user.id for user in users] == [first["id"]]
    assert [event.action for event in await events_in_db(client)] == ["user.registered"]


async def test_two_concurrent_registrations_of_one_email_give_one_201_and_one_409(client: KeystileClient) -> None:
    body = {"email": "race@example.com", "password": PASSWORD}

    responses = await asyncio.gather(
        client.post("/auth/register", json=body),
        client.post("/auth/register", json=body | {"email": "RACE@example.com"}),
    )

    assert sorted(response.status_code for response in responses) == [201, 409]
    [created] = [response.json() for response in responses if response.status_code == 201]
    users = await users_in_db(client)
    assert [(user.id, user.email) for user in users] == [(created["id"], "race@example.com")]
    assert [(event.action, event.actor_id) for event in await events_in_db(client)] == [
        ("user.registered", created["id"])
    ]


async def test_register_is_403_when_registration_is_closed_and_writes_nothing(make_client: MakeClient) -> None:
    client = await make_client(allow_registration=False)

    response = await client.post("/auth/register", json={"email": "alice@example.com", "password": PASSWORD})

    assert response.status_code == 403
    assert response.json() == {"detail": "Registration is closed"}
    assert await users_in_db(client) == []
    assert await events_in_db(client) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty-object"),
        pytest.param({"email": "alice@example.com"}, id="missing-password"),
        pytest.param({"password": PASSWORD}, id="missing-email"),
        pytest.param({"email": 123, "password": PASSWORD}, id="email-not-a-string"),
        pytest.param({"email": "alice@example.com", "password": 12345678}, id="password-not-a-string"),
        pytest.param({"email": ["alice@example.com"], "password": PASSWORD}, id="email-a-list"),
        pytest.param({"email": None, "password": PASSWORD}, id="email-null"),
        pytest.param({"email": "alice@example.com", "password": None}, id="password-null"),
        pytest.param({"email": "not-an-email", "password": PASSWORD}, id="not-an-email"),
        pytest.param({"email": "alice@", "password": PASSWORD}, id="no-domain"),
        pytest.param({"email": "@example.com", "password": PASSWORD}, id="no-local-part"),
        pytest.param({"email": "", "password": PASSWORD}, id="empty-email"),
        pytest.param({"email": "al\x00ice@example.com", "password": PASSWORD}, id="nul-in-email-local-part"),
        pytest.param({"email": "alice@exa\x00mple.com", "password": PASSWORD}, id="nul-in-email-domain"),
        pytest.param({"email": "alice@example.com\x00", "password": PASSWORD}, id="nul-at-email-end"),
        pytest.param({"email": "a" * 310 + "@example.com", "password": PASSWORD}, id="email-too-long"),
        pytest.param({"email": "alice@example.com", "password": "x" * 7}, id="password-7-chars"),
        pytest.param({"email": "alice@example.com", "password": "x" * 129}, id="password-129-chars"),
        pytest.param({"email": "alice@example.com", "password": ""}, id="password-empty"),
        pytest.param({"email": "alice@example.com", "password": PASSWORD, "is_admin": True}, id="unknown-is-admin"),
        pytest.param({"email": "alice@example.com", "password": PASSWORD, "nickname": "al"}, id="unknown-field"),
        pytest.param([{"email": "alice@example.com", "password": PASSWORD}], id="array-not-object"),
        pytest.param("alice@example.com", id="string-not-object"),
        pytest.param(None, id="null-body"),
    ],
)
async def test_invalid_registration_input_is_422_and_writes_nothing(client: KeystileClient, body: Any) -> None:
    response = await client.post("/auth/register", json=body)

    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)
    assert await users_in_db(client) == []
    assert await events_in_db(client) == []


@pytest.mark.parametrize(
    "password",
    [pytest.param("x" * 8, id="8-chars"), pytest.param("x" * 128, id="128-chars")],
)
async def test_password_length_bounds_are_inclusive(client: KeystileClient, password: str) -> None:
    response = await client.post("/auth/register", json={"email": "alice@example.com", "password": password})

    assert response.status_code == 201
    assert len(await users_in_db(client)) == 1
    login = await client.post("/auth/token", data={"username": "alice@example.com", "password": password})
    assert login.status_code == 200


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"email": "alice@example.com", "password": ', id="truncated"),
        pytest.param(b"{email: alice@example.com}", id="unquoted"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_malformed_json_is_422_and_writes_nothing(client: KeystileClient, content: bytes) -> None:
    response = await client.post("/auth/register", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert await users_in_db(client) == []


async def test_a_rejected_password_is_not_echoed_in_the_422(client: KeystileClient) -> None:
    password = "too-long-secret-" + "y" * 120

    response = await client.post("/auth/register", json={"email": "alice@example.com", "password": password})

    assert response.status_code == 422
    assert password not in response.text
    assert "y" * 120 not in response.text
