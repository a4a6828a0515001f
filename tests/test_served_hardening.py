"""The hardening findings (issue 10) against a real `keystile serve` over real sockets: what uvicorn's parser and
keystile's guards do together, one request each, on one server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from keystile.keys.format import generate_key
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD
from tests.process import KeystileServer, register_and_issue_key

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeystileServer]:
    directory = tmp_path_factory.mktemp("served")
    env = {
        "KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'keystile.db'}",
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
        "KEYSTILE_LOG_LEVEL": "info",
    }
    with KeystileServer(env, cwd=directory) as running:
        yield running


@pytest.fixture(scope="module")
def alice(server: KeystileServer) -> tuple[dict[str, str], dict[str, object]]:
    return register_and_issue_key(server.url, "alice@example.com")


def get(server: KeystileServer, path: str, **options: object) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", timeout=30.0, **options)  # type: ignore[arg-type]


def test_an_oversized_header_block_is_431_and_the_server_goes_on(server: KeystileServer) -> None:
    response = get(server, "/healthz", headers={"X-Padding": "a" * 1_000_000})

    assert response.status_code == 431
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert get(server, "/healthz").status_code == 200


def test_more_than_100_header_fields_is_431(server: KeystileServer) -> None:
    assert get(server, "/healthz", headers=[(f"x-field-{i}", "v") for i in range(101)]).status_code == 431


def test_a_repeated_api_key_header_is_400(
    server: KeystileServer, alice: tuple[dict[str, str], dict[str, object]]
) -> None:
    key = str(alice[1]["key"])

    response = get(server, "/data/export", headers=[("X-API-Key", key), ("X-API-Key", key)])

    assert response.status_code == 400
    assert response.json() == {"detail": "Repeated X-API-Key header"}


@pytest.mark.parametrize("subject", ["9223372036854775808", "1" + "0" * 30, "²", "٢", "01"])
def test_a_signed_token_with_a_non_canonical_subject_is_401(server: KeystileServer, subject: str) -> None:
    now = datetime.now(UTC)
    claims = {"sub": subject, "iat": now, "exp": now + timedelta(minutes=5), "iss": "keystile", "aud": "keystile"}
    token = jwt.encode(claims, TEST_SECRET_KEY, algorithm="HS256")

    response = get(server, "/users/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401


def test_an_undecodable_body_is_422(server: KeystileServer, alice: tuple[dict[str, str], dict[str, object]]) -> None:
    response = httpx.post(
        f"{server.url}/keys/",
        content=b'{"name": "caf\xe9"}',
        headers=alice[0] | {"Content-Type": "application/json"},
        timeout=10.0,
    )

    assert response.status_code == 422


def test_the_token_response_is_no_store(
    server: KeystileServer, alice: tuple[dict[str, str], dict[str, object]]
) -> None:
    response = httpx.post(
        f"{server.url}/auth/token", data={"username": "alice@example.com", "password": PASSWORD}, timeout=10.0
    )

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"


def test_metadata_nested_256_deep_is_422(
    server: KeystileServer, alice: tuple[dict[str, str], dict[str, object]]
) -> None:
    metadata: dict[str, object] = {}
    for _ in range(255):
        metadata = {"a": metadata}

    response = httpx.post(
        f"{server.url}/keys/", json={"name": "deep", "metadata": metadata}, headers=alice[0], timeout=10.0
    )

    assert response.status_code == 422
    assert get(server, "/keys/", headers=alice[0]).status_code == 200


def test_a_verifier_key_of_another_owner_gets_not_found(
    server: KeystileServer, alice: tuple[dict[str, str], dict[str, object]]
) -> None:
    _, verifier = register_and_issue_key(server.url, "mallory@example.com", scopes=["keys:verify"])

    response = httpx.post(
        f"{server.url}/v1/keys/verify",
        json={"key": alice[1]["key"]},
        headers={"X-API-Key": str(verifier["key"])},
        timeout=10.0,
    )

    assert response.status_code == 200
    assert (response.json()["code"], response.json()["api_key_id"]) == ("NOT_FOUND", None)


def test_a_key_anywhere_in_a_url_never_reaches_the_log(server: KeystileServer) -> None:
    key = generate_key("ks").raw

    for path in (f"/keys/{key}", f"/data/export?apikey={key}", f"/data/export?x={key}"):
        get(server, path)

    assert key not in server.log
    assert key.split("_")[-1] not in server.log
    assert json.dumps(key) not in server.log
