"""The OpenAPI document declares the answers each route really gives: a client generated from it, or a fuzzer checking
status codes against it, must not meet an undeclared 401, 403, 429 or 503.

The table names every operation, so a new route fails here until someone writes down what it can answer.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from keystile.app import DOCUMENTED_TAGS, create_app
from keystile.settings import Settings
from tests.conftest import TEST_SECRET_KEY

JWT = {401, 503}  # a bearer token: missing or invalid, and the account read from the database
API_KEY = {401, 403, 429, 503}  # keystile.fastapi: invalid key; scope or address; rate, quota, failures; limiter or db

EXPECTED: dict[str, set[int]] = {
    "POST /auth/register": {201, 403, 409, 422, 503},
    "POST /auth/token": {200, 401, 422, 429, 503},
    "GET /users/me": {200} | JWT,
    "POST /keys/": {201, 422} | JWT,
    "GET /keys/": {200, 422} | JWT,
    "GET /keys/{key_pk}": {200, 404, 422} | JWT,
    "PATCH /keys/{key_pk}": {200, 404, 409, 422} | JWT,
    "POST /keys/{key_pk}/rotate": {201, 404, 409, 422} | JWT,
    "POST /keys/{key_pk}/revoke": {200, 404, 422} | JWT,
    "POST /v1/keys/verify": {200, 422} | API_KEY,
    "GET /admin/keys": {200, 403, 422} | JWT,
    "POST /admin/keys/{key_pk}/revoke": {200, 403, 404, 422} | JWT,
    "GET /data/export": {200} | API_KEY,
    **{
        f"{method} /v1/auth": {200, 422} | API_KEY
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
    },
    "GET /audit": {200, 422} | JWT,
    "GET /keys/{key_pk}/usage": {200, 404, 422} | JWT,
    "GET /identities/{identity_pk}/usage": {200, 404, 422} | JWT,
    "POST /identities": {201, 409, 422} | JWT,
    "GET /identities": {200, 422} | JWT,
    "GET /identities/{identity_pk}": {200, 404, 422} | JWT,
    "PATCH /identities/{identity_pk}": {200, 404, 409, 422} | JWT,
    "DELETE /identities/{identity_pk}": {204, 404, 409, 422} | JWT,
    "POST /webhooks": {201, 422} | JWT,
    "GET /webhooks": {200, 422} | JWT,
    "GET /webhooks/{webhook_id}": {200, 404, 422} | JWT,
    "PATCH /webhooks/{webhook_id}": {200, 404, 422} | JWT,
    "DELETE /webhooks/{webhook_id}": {204, 404, 422} | JWT,
    "GET /webhooks/{webhook_id}/deliveries": {200, 404, 422} | JWT,
    "POST /webhooks/{webhook_id}/test": {202, 404, 409, 422} | JWT,
    "POST /v1/leaks": {200, 422} | API_KEY,
    "POST /v1/leaks/github": {200, 401, 404, 503},
    "GET /healthz": {200},
    "GET /readyz": {200, 503},
    "GET /metrics": {200},
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    settings = Settings(database_url="sqlite+aiosqlite:///unused.db", secret_key=TEST_SECRET_KEY)
    return create_app(settings).openapi()


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def test_the_table_names_every_operation(document: dict[str, Any]) -> None:
    assert set(operations(document)) == set(EXPECTED)


@pytest.mark.parametrize("label", sorted(EXPECTED))
def test_each_operation_declares_every_status_it_can_answer(document: dict[str, Any], label: str) -> None:
    declared = {int(code) for code in operations(document)[label]["responses"]}

    assert EXPECTED[label] <= declared, f"{label} does not declare {sorted(EXPECTED[label] - declared)}"


def test_errors_have_a_detail_body_and_authentication_errors_their_headers(document: dict[str, Any]) -> None:
    for label, operation in operations(document).items():
        for code in ("401", "403", "429", "503"):
            response = operation["responses"].get(code)
            if response is None or label == "GET /readyz":
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema["properties"]["detail"] == {"type": "string"}, (label, code)
            if code == "401":
                assert response["headers"]["WWW-Authenticate"]["required"], label
            if code == "429":
                assert "Retry-After" in response["headers"], label


def test_an_issued_key_links_to_what_can_be_done_with_it(document: dict[str, Any]) -> None:
    paths = document["paths"]
    for path in ("/keys/", "/keys/{key_pk}/rotate"):
        links = paths[path]["post"]["responses"]["201"]["links"]
        assert set(links) == {"GetKey", "UpdateKey", "RevokeKey", "RotateKey"}
        for link in links.values():
            target_path, method = link["operationRef"].removeprefix("#/paths/").replace("~1", "/").rsplit("/", 1)
            assert method in paths[target_path], link
            assert link["parameters"] == {"key_pk": "$response.body#/id"}


def test_sections_follow_the_api_order_whatever_order_routes_are_matched_in(document: dict[str, Any]) -> None:
    used = {tag for path in document["paths"].values() for operation in path.values() for tag in operation["tags"]}

    assert [tag["name"] for tag in document["tags"]] == list(DOCUMENTED_TAGS)
    assert used == set(DOCUMENTED_TAGS)


def test_the_gateway_routes_are_matched_first_and_every_api_route_without_a_nested_router() -> None:
    app = create_app(Settings(secret_key=TEST_SECRET_KEY))
    api_routes = [route for route in app.router.routes if isinstance(route, APIRoute)]

    first_paths = list(dict.fromkeys(route.path for route in api_routes))[:3]
    assert first_paths == ["/v1/keys/verify", "/v1/auth", "/data/export"]
    # Only the dashboard (its own nested pages) is included the FastAPI >= 0.137 way (app._include_flat).
    nested = [route for route in app.router.routes if not isinstance(route, APIRoute | Route | Mount)]
    assert len(nested) == 1
