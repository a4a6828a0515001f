from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from keystile.app import create_app
from keystile.clock import FakeClock
from tests.conftest import MakeClient, make_settings
from tests.helpers import CHEAP_PASSWORDS, KeystileClient

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
async def client_on(clock: FakeClock) -> AsyncIterator[Any]:
    """Build a client on any database URL, reachable or not (make_client is bound to the test database)."""
    async with AsyncExitStack() as stack:

        async def make(database_url: str, **overrides: Any) -> httpx.AsyncClient:
            app = create_app(make_settings(database_url, **overrides), clock=clock, passwords=CHEAP_PASSWORDS)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://testserver"))

        yield make


async def test_healthz_is_200_ok(client: KeystileClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_healthz_stays_200_while_the_database_is_down(client_on: Any, tmp_path: Path) -> None:
    client = await client_on(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/keystile.db")

    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_when_the_database_answers(client: KeystileClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sqlite+aiosqlite:///{tmp}/missing/dir/keystile.db", id="sqlite-in-a-missing-directory"),
        pytest.param("postgresql+asyncpg://postgres@127.0.0.1:1/keystile", id="postgres-refusing-connections"),
    ],
)
async def test_readyz_is_503_naming_the_database_when_it_is_down(client_on: Any, tmp_path: Path, url: str) -> None:
    client = await client_on(url.format(tmp=tmp_path))

    response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "down": ["database"]}
    assert not (tmp_path / "missing").exists()


async def test_readyz_recovers_once_the_database_answers_again(client_on: Any, tmp_path: Path) -> None:
    directory = tmp_path / "later"
    client = await client_on(f"sqlite+aiosqlite:///{directory}/keystile.db")
    assert (await client.get("/readyz")).status_code == 503

    directory.mkdir()

    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_503_naming_redis_when_configured_redis_is_down(make_client: MakeClient) -> None:
    client = await make_client(redis_url=UNREACHABLE_REDIS)

    response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "down": ["redis"]}


async def test_readyz_names_both_when_the_database_and_redis_are_down(client_on: Any, tmp_path: Path) -> None:
    client = await client_on(f"sqlite+aiosqlite:///{tmp_path}/missing/keystile.db", redis_url=UNREACHABLE_REDIS)

    response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "down": ["database", "redis"]}


async def test_openapi_document_loads_and_lists_the_contract_paths(client: KeystileClient) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "keystile"
    paths = document["paths"]
    for path, method in [
        ("/auth/register", "post"),
        ("/auth/token", "post"),
        ("/users/me", "get"),
        ("/keys/", "post"),
        ("/keys/", "get"),
        ("/keys/{key_pk}", "get"),
        ("/keys/{key_pk}/revoke", "post"),
        ("/data/export", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from the OpenAPI document"
    schemes = document["components"]["securitySchemes"]
    assert any(scheme.get("type") == "apiKey" and scheme.get("name") == "X-API-Key" for scheme in schemes.values())
    assert any(scheme.get("type") == "oauth2" for scheme in schemes.values())


async def test_openapi_documents_the_readiness_503(client: KeystileClient) -> None:
    document = (await client.get("/openapi.json")).json()

    assert "503" in document["paths"]["/readyz"]["get"]["responses"]


async def test_docs_page_is_served(client: KeystileClient) -> None:
    response = await client.get("/docs")

    assert response.status_code == 200
    assert "openapi.json" in response.text
