"""`/v1/auth` (keystile.forward_auth) in process: the answers gateways get, compared with the dependency's.

Each comparison asks keystile's own `/data/export` (the public FastAPI dependency) and `/v1/auth` the same question on
one app, so both see the same keys, limits and clock. Real nginx and Caddy in front of it: tests/test_gateways.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keystile.app import create_app
from keystile.keys.format import generate_key
from keystile.ratelimit.guard import LimiterClosedError
from tests.conftest import MakeClient, make_settings
from tests.helpers import EXPORT, KeystileClient, create_key, key_header, user_headers

AUTH = "/v1/auth"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
IDENTITY = ("x-keystile-key-id", "x-keystile-owner-id", "x-keystile-scopes")
# What the dependency decides about a response, compared between /data/export and /v1/auth.
COMPARED_HEADERS = ("www-authenticate", "retry-after", "ratelimit-policy", "ratelimit")


def refusal(response: httpx.Response) -> tuple[int, Any, dict[str, str | None]]:
    """What the dependency decides about a refusal: status, body and the headers it sets."""
    return response.status_code, response.json(), {name: response.headers.get(name) for name in COMPARED_HEADERS}


def assert_no_identity(response: httpx.Response) -> None:
    """A refusal names no key: no `X-Keystile-*` field at all."""
    assert not [name for name in response.headers if name.lower().startswith("x-keystile-")]


async def test_the_router_declares_every_method_with_its_own_operation() -> None:
    app = create_app(make_settings("sqlite+aiosqlite:///unused.db"))

    operations = app.openapi()["paths"][AUTH]

    assert {method.upper() for method in operations} == set(METHODS)
    assert len({operation["operationId"] for operation in operations.values()}) == len(METHODS)
    for operation in operations.values():
        assert {"200", "401", "403", "429", "503"} <= set(operation["responses"])


@pytest.mark.parametrize("method", METHODS)
async def test_a_valid_key_is_200_with_its_identity_for_any_method(client: KeystileClient, method: str) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, scopes=["write", "read"])

    response = await client.request(method, AUTH, headers=key_header(created))

    assert response.status_code == 200, response.text
    assert response.content == b""
    owner = (await client.get("/users/me", headers=headers)).json()["id"]
    assert response.headers["x-keystile-key-id"] == str(created["id"])
    assert response.headers["x-keystile-owner-id"] == str(owner)
    assert response.headers["x-keystile-scopes"] == "read write"


async def test_a_key_without_scopes_is_sent_an_empty_scopes_field(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client))

    response = await client.get(AUTH, headers=key_header(created))

    assert response.status_code == 200
    assert "x-keystile-scopes" in response.headers
    assert response.headers["x-keystile-scopes"] == ""


async def test_the_rate_limit_fields_are_those_of_the_dependency(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 5, "window_seconds": 60})

    ours = await client.get(EXPORT, headers=key_header(created))
    theirs = await client.get(AUTH, headers=key_header(created))

    assert ours.headers["ratelimit-policy"] == theirs.headers["ratelimit-policy"] == '"key";q=5;w=60'
    assert ours.headers["ratelimit"].startswith('"key";r=4;')
    assert theirs.headers["ratelimit"].startswith('"key";r=3;')


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no key"),
        pytest.param({"X-API-Key": ""}, id="empty key"),
        pytest.param({"X-API-Key": "not-a-key"}, id="garbage"),
        pytest.param({"X-API-Key": generate_key("ks").raw}, id="unknown"),
    ],
)
async def test_a_401_is_the_dependencys_and_carries_no_identity(
    client: KeystileClient, headers: dict[str, str]
) -> None:
    ours = await client.get(EXPORT, headers=headers)
    theirs = await client.get(AUTH, headers=headers)

    assert theirs.status_code == 401
    assert refusal(theirs) == refusal(ours)
    assert_no_identity(theirs)


async def test_a_revoked_key_is_401_without_identity(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert (await client.post(f"/keys/{created['id']}/revoke", headers=headers)).status_code == 200

    response = await client.get(AUTH, headers=key_header(created))

    assert response.status_code == 401
    assert_no_identity(response)


@pytest.mark.parametrize(
    ("query", "missing"),
    [
        pytest.param("?scopes=admin,billing", "admin", id="first of two"),
        pytest.param("?scopes=billing,admin", "billing", id="first in the order given"),
        pytest.param("?scopes=read,billing", "billing", id="after one held"),
        pytest.param("?scopes=read&scopes=admin", "admin", id="repeated parameters add up"),
    ],
)
async def test_a_missing_scope_is_403_naming_the_first_in_the_order_given(
    client: KeystileClient, query: str, missing: str
) -> None:
    created = await create_key(client, await user_headers(client), scopes=["read"])

    response = await client.get(AUTH + query, headers=key_header(created))

    assert response.status_code == 403
    assert response.json() == {"detail": f"API key lacks required scope: {missing}"}
    assert_no_identity(response)


@pytest.mark.parametrize("query", ["?scopes=read", "?scopes=", "?scopes=read,,%20read", "?scopes=read%2Cwrite"])
async def test_held_scopes_pass(client: KeystileClient, query: str) -> None:
    created = await create_key(client, await user_headers(client), scopes=["read", "write"])

    response = await client.get(AUTH + query, headers=key_header(created))

    assert response.status_code == 200, response.text


async def test_a_403_for_scopes_is_the_dependencys(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client))

    # keystile's own routes need no scope; /v1/keys/verify needs keys:verify through the same dependency.
    ours = await client.post("/v1/keys/verify", json={"key": created["key"]}, headers=key_header(created))
    theirs = await client.get(AUTH + "?scopes=keys:verify", headers=key_header(created))

    assert theirs.status_code == 403
    assert refusal(theirs) == refusal(ours)


async def test_a_key_is_never_read_from_the_query_string(make_client: MakeClient) -> None:
    client = await make_client(accept_query_key=True)
    created = await create_key(client, await user_headers(client))
    assert (await client.get(f"{EXPORT}?api_key={created['key']}")).status_code == 200  # the dependency reads it

    response = await client.get(f"{AUTH}?api_key={created['key']}")

    assert response.status_code == 401
    assert response.json() == {"detail": "API key required (header X-API-Key)"}
    assert response.headers["www-authenticate"] == "APIKey"
    assert_no_identity(response)


async def test_a_rate_limited_key_is_the_dependencys_429(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 1, "window_seconds": 60})
    assert (await client.get(AUTH, headers=key_header(created))).status_code == 200

    ours = await client.get(EXPORT, headers=key_header(created))
    theirs = await client.get(AUTH, headers=key_header(created))

    assert theirs.status_code == 429
    assert theirs.headers["retry-after"].isdigit()
    assert refusal(theirs) == refusal(ours)
    assert_no_identity(theirs)


async def test_an_exhausted_quota_is_the_dependencys_429(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client), quota=1)
    assert (await client.get(AUTH, headers=key_header(created))).status_code == 200

    ours = await client.get(EXPORT, headers=key_header(created))
    theirs = await client.get(AUTH, headers=key_header(created))

    assert theirs.status_code == 429
    assert refusal(theirs) == refusal(ours)


async def test_failed_attempts_from_one_address_are_429_like_the_dependency(
    make_client: MakeClient,
) -> None:
    client = await make_client(key_failure_limit="2/60")
    bad = {"X-API-Key": generate_key("ks").raw}
    answers = [(await client.get(AUTH, headers=bad)).status_code for _ in range(2)]

    ours = await client.get(EXPORT, headers=bad)
    theirs = await client.get(AUTH, headers=bad)

    assert answers == [401, 401]
    assert theirs.status_code == 429
    assert refusal(theirs) == refusal(ours)


async def test_a_closed_limiter_is_the_dependencys_503(client: KeystileClient, monkeypatch: pytest.MonkeyPatch) -> None:
    class DownLimiter:
        async def verify(self, *args: Any, **kwargs: Any) -> None:
            raise LimiterClosedError

    monkeypatch.setattr(client.keystile, "verifier", DownLimiter())
    ours = await client.get(EXPORT, headers={"X-API-Key": "ks_anything"})
    theirs = await client.get(AUTH, headers={"X-API-Key": "ks_anything"})

    assert theirs.status_code == 503
    assert refusal(theirs) == refusal(ours)
    assert theirs.headers["retry-after"] == "1"


async def test_each_check_counts_as_a_use(client: KeystileClient) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)

    for method in ("GET", "POST", "HEAD"):
        assert (await client.request(method, AUTH, headers=key_header(created))).status_code == 200

    read = (await client.get(f"/keys/{created['id']}", headers=headers)).json()
    assert read["use_count"] == 3
    assert read["last_used_at"] is not None


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "status"),
    [
        pytest.param(["127.0.0.1"], "10.1.2.3", 200, id="trusted gateway, allowed client"),
        pytest.param(["127.0.0.1"], "192.0.2.7", 403, id="trusted gateway, refused client"),
        pytest.param([], "10.1.2.3", 403, id="untrusted gateway: the header is ignored"),
    ],
)
async def test_the_client_address_comes_from_x_forwarded_for_of_a_trusted_gateway(
    make_client: MakeClient, trusted: list[str], forwarded_for: str, status: int
) -> None:
    client = await make_client(trusted_proxies=trusted)
    created = await create_key(client, await user_headers(client), ip_allowlist=["10.0.0.0/8"])

    response = await client.get(AUTH, headers={**key_header(created), "X-Forwarded-For": forwarded_for})

    assert response.status_code == status
    if status == 403:
        assert response.json() == {"detail": "API key not allowed from this address"}
