"""keystile as a library: another FastAPI app guards its own routes with `keystile.fastapi` over a keystile database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI

from keystile.clock import FakeClock
from keystile.fastapi import APIKeyAuth, KeyRecord, RequireScopes
from keystile.instance import Keystile
from keystile.keys.models import ApiKey
from keystile.keys.schemas import KeyCreate
from keystile.users import service as users_service
from tests.conftest import make_settings
from tests.helpers import CHEAP_PASSWORDS, INVALID_KEY, PASSWORD


def build_app(keystile: Keystile) -> FastAPI:
    """An app of the library user's own, as the README shows it: not keystile's create_app."""
    app = FastAPI(lifespan=keystile.lifespan)

    @app.get("/reports")
    async def read_reports(key: APIKeyAuth) -> dict[str, Any]:
        return {"owner": key.user_id, "key": key.id}

    @app.post("/reports")
    async def write_report(key: Annotated[KeyRecord, RequireScopes("data:write")]) -> dict[str, Any]:
        return {"written_by": key.id}

    return app


@dataclass
class Library:
    keystile: Keystile
    http: httpx.AsyncClient

    async def issue(self, *scopes: str) -> tuple[int, str]:
        """A key for user 1 issued through keystile's service, as the embedding app would; (id, raw key)."""
        async with self.keystile.session_factory() as session:
            keys = self.keystile.key_manager(session)
            issued = await keys.create(owner_id=1, spec=KeyCreate(name="library", scopes=list(scopes)))
        return issued.row.id, issued.raw


@asynccontextmanager
async def running_library(database_url: str, clock: FakeClock) -> AsyncIterator[Library]:
    """The app with its lifespan entered and user 1 created; leaving runs the lifespan's shutdown."""
    keystile = Keystile(make_settings(database_url), clock=clock, passwords=CHEAP_PASSWORDS)
    app = build_app(keystile)
    async with app.router.lifespan_context(app):
        async with keystile.session_factory() as session:
            await users_service.create_user(
                session, email="owner@example.com", password=PASSWORD, passwords=keystile.passwords, now=clock()
            )
            await session.commit()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://library.test") as http:
            yield Library(keystile, http)


@pytest.fixture
async def library(database_url: str, clock: FakeClock) -> AsyncIterator[Library]:
    async with running_library(database_url, clock) as running:
        yield running


async def stored_key(keystile: Keystile, key_pk: int) -> ApiKey:
    async with keystile.session_factory() as session:
        row = await session.get(ApiKey, key_pk)
    assert row is not None
    return row


async def test_a_route_taking_api_key_auth_answers_a_valid_key_with_its_record(library: Library) -> None:
    key_pk, raw = await library.issue()
    response = await library.http.get("/reports", headers={"X-API-Key": raw})
    assert response.status_code == 200, response.text
    assert response.json() == {"owner": 1, "key": key_pk}


async def test_a_request_without_a_key_gets_401_naming_the_header(library: Library) -> None:
    response = await library.http.get("/reports")
    assert response.status_code == 401
    assert response.json() == {"detail": "API key required (header X-API-Key)"}
    assert response.headers["WWW-Authenticate"] == "APIKey"


@pytest.mark.parametrize(
    "presented",
    [
        pytest.param("invalid-key-here", id="garbage"),
        pytest.param("ks_000000000000_" + "0" * 49, id="well-shaped-wrong-checksum"),
    ],
)
async def test_an_invalid_key_gets_401_on_both_routes(library: Library, presented: str) -> None:
    for method in ("GET", "POST"):
        response = await library.http.request(method, "/reports", headers={"X-API-Key": presented})
        assert response.status_code == 401, method
        assert response.json() == INVALID_KEY
        assert response.headers["WWW-Authenticate"] == "APIKey"


async def test_a_key_without_the_required_scope_gets_403_naming_the_scope(library: Library) -> None:
    _, raw = await library.issue("data:read")
    response = await library.http.post("/reports", headers={"X-API-Key": raw})
    assert response.status_code == 403
    assert response.json() == {"detail": "API key lacks required scope: data:write"}
    # The same key is fine where no scope is required.
    assert (await library.http.get("/reports", headers={"X-API-Key": raw})).status_code == 200


async def test_a_key_with_the_required_scope_passes_the_scoped_route(library: Library) -> None:
    key_pk, raw = await library.issue("data:read", "data:write")
    response = await library.http.post("/reports", headers={"X-API-Key": raw})
    assert response.status_code == 200, response.text
    assert response.json() == {"written_by": key_pk}


async def test_a_key_revoked_through_the_service_gets_401_at_once(library: Library) -> None:
    key_pk, raw = await library.issue()
    assert (await library.http.get("/reports", headers={"X-API-Key": raw})).status_code == 200  # now cached

    keystile = library.keystile
    async with keystile.session_factory() as session:
        keys = keystile.key_manager(session)
        await keys.revoke(await keys.get(key_pk, owner_id=None, for_update=True), actor_id=1, ip=None)

    response = await library.http.get("/reports", headers={"X-API-Key": raw})
    assert response.status_code == 401
    assert response.json() == INVALID_KEY


async def test_the_lifespan_writes_the_recorded_uses_to_the_database_on_shutdown(
    database_url: str, clock: FakeClock
) -> None:
    async with running_library(database_url, clock) as library:
        key_pk, raw = await library.issue()
        for _ in range(3):
            assert (await library.http.get("/reports", headers={"X-API-Key": raw})).status_code == 200

    reader = Keystile(make_settings(database_url), clock=clock)
    try:
        row = await stored_key(reader, key_pk)
    finally:
        await reader.engine.dispose()
    assert row.use_count == 3
    assert row.last_used_at == clock()


def test_keystile_is_importable_from_the_package_root_as_the_fastapi_module_documents() -> None:
    import keystile

    assert getattr(keystile, "Keystile", None) is Keystile


def test_the_package_ships_a_py_typed_marker_for_apps_that_type_check() -> None:
    assert (resources.files("keystile") / "py.typed").is_file()
