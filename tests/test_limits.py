"""keystile.limits: oversized bodies (413) and header blocks (431), repeated credentials (400), nosniff."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.types import Message, Receive, Scope, Send

from keystile.limits import MAX_BODY_BYTES, RequestLimits
from tests.helpers import (
    EXPORT,
    PASSWORD,
    KeystileClient,
    create_key,
    database_snapshot,
    user_headers,
    users_in_db,
)

TOO_LARGE = {"detail": "Request body too large (limit 64 KiB)"}


async def chunks(count: int, size: int = 1024) -> AsyncIterator[bytes]:
    """A body streamed in `count` chunks of `size` bytes, sent without a Content-Length."""
    for _ in range(count):
        yield b" " * size


class EchoApp:
    """A tiny FastAPI app behind the guard: POST /echo answers how many body bytes it read."""

    def __init__(self) -> None:
        self.entered = 0  # requests that reached the endpoint
        self.read: list[int] = []  # body lengths the endpoint read in full
        app = FastAPI()

        @app.post("/echo")
        async def echo(request: Request) -> dict[str, int]:
            self.entered += 1
            body = await request.body()
            self.read.append(len(body))
            return {"received": len(body)}

        self.asgi = RequestLimits(app)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.asgi), base_url="http://testserver")


async def call(app: RequestLimits, scope: Scope, body: bytes = b"") -> list[Message]:
    """Run `app` once on `scope` with `body` as a single request message; every message it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/echo", "headers": headers, "query_string": b""}


# The guard around a tiny app


async def test_a_body_of_exactly_the_limit_reaches_the_app_declared_or_streamed() -> None:
    app = EchoApp()
    async with app.client() as client:
        declared = await client.post("/echo", content=b"x" * MAX_BODY_BYTES)
        streamed = await client.post("/echo", content=chunks(MAX_BODY_BYTES // 1024))

    assert MAX_BODY_BYTES == 64 * 1024
    assert declared.status_code == 200, declared.text
    assert declared.json() == {"received": MAX_BODY_BYTES}
    assert streamed.status_code == 200, streamed.text
    assert streamed.json() == {"received": MAX_BODY_BYTES}
    assert app.read == [MAX_BODY_BYTES, MAX_BODY_BYTES]


async def test_a_declared_oversize_body_is_413_before_the_app_runs() -> None:
    app = EchoApp()
    async with app.client() as client:
        response = await client.post("/echo", content=b"x" * (MAX_BODY_BYTES + 1))

    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert response.headers["content-type"] == "application/json"
    assert app.entered == 0


async def test_a_streamed_oversize_body_is_413_and_the_app_never_reads_it_whole() -> None:
    app = EchoApp()
    async with app.client() as client:
        response = await client.post("/echo", content=chunks(65))

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert app.entered == 1
    assert app.read == []


async def test_a_streamed_oversize_body_is_413_even_when_the_app_lets_the_error_propagate() -> None:
    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    transport = httpx.ASGITransport(app=RequestLimits(raw_app))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        small = await client.post("/", content=chunks(2))
        large = await client.post("/", content=chunks(65))

    assert (small.status_code, small.text) == (200, "read it all")
    assert large.status_code == 413
    assert large.json() == TOO_LARGE


async def test_a_content_length_that_is_not_a_number_is_413() -> None:
    reached: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    sent = await call(RequestLimits(inner), http_scope([(b"content-length", b"12x")]), b"x" * 12)

    assert reached == []
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == TOO_LARGE


async def test_a_smaller_configured_limit_applies() -> None:
    reached: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    guard = RequestLimits(inner, max_bytes=10)
    at_limit = await call(guard, http_scope([(b"content-length", b"10")]), b"x" * 10)
    over = await call(guard, http_scope([(b"content-length", b"11")]), b"x" * 11)

    assert at_limit == []
    assert len(reached) == 1
    assert over[0]["status"] == 413


async def test_non_http_scopes_pass_through_untouched() -> None:
    reached: list[Scope] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    scope: Scope = {"type": "lifespan"}
    sent = await call(RequestLimits(inner, max_bytes=0), scope)

    assert reached == [scope]
    assert sent == []


# Through the keystile app: nothing is written


async def test_a_65_kib_body_is_413_and_writes_nothing(client: KeystileClient) -> None:
    body = {"email": "alice@example.com", "password": PASSWORD, "padding": "p" * (65 * 1024)}

    response = await client.post("/auth/register", json=body)

    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert await users_in_db(client) == []


async def test_a_65_kib_streamed_body_without_content_length_is_413(client: KeystileClient) -> None:
    response = await client.post("/auth/register", content=chunks(65), headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert await users_in_db(client) == []


async def test_body_over_64_kib_is_413_and_issues_no_key(client: KeystileClient) -> None:
    headers = await user_headers(client)
    before = await database_snapshot(client)

    response = await client.post("/keys/", json={"name": "ci", "metadata": {"x": "y" * 70_000}}, headers=headers)

    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert await database_snapshot(client) == before


# Header limits and nosniff, over the whole service


async def test_a_header_block_over_16_kib_is_431_and_the_service_goes_on(client: KeystileClient) -> None:
    response = await client.get("/healthz", headers={"X-Padding": "a" * (16 * 1024)})

    assert response.status_code == 431
    assert response.json() == {"detail": "Request header fields too large (limit 16 KiB and 100 fields)"}
    assert (await client.get("/healthz")).status_code == 200


async def test_more_than_100_header_fields_is_431(client: KeystileClient) -> None:
    headers = [(f"x-field-{index}", "v") for index in range(101)]

    response = await client.get("/healthz", headers=headers)

    assert response.status_code == 431


async def test_a_request_just_within_the_header_limits_is_served(client: KeystileClient) -> None:
    # httpx adds host, accept, accept-encoding, connection and user-agent: 95 of our own make 100 fields.
    headers = [(f"x-field-{index}", "v") for index in range(95)]

    response = await client.get("/healthz", headers=headers)

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", ["X-API-Key", "Authorization"])
async def test_a_repeated_credential_header_is_400_and_reaches_no_route(client: KeystileClient, name: str) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    before = await database_snapshot(client)

    response = await client.get(EXPORT, headers=[(name, created["key"]), (name, created["key"])])

    assert response.status_code == 400
    assert response.json() == {"detail": f"Repeated {name} header"}
    assert await database_snapshot(client) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/healthz", id="ok"),
        pytest.param("GET", "/users/me", id="401"),
        pytest.param("GET", "/no-such-page", id="404"),
        pytest.param("POST", "/auth/register", id="422"),
        pytest.param("GET", "/openapi.json", id="openapi"),
    ],
)
async def test_every_response_carries_nosniff(client: KeystileClient, method: str, path: str) -> None:
    response = await client.request(method, path)

    assert response.headers["X-Content-Type-Options"] == "nosniff"
