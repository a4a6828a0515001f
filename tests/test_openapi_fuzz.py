"""A bounded schemathesis run against a real `keystile serve`: no input the schema allows (or nearly allows) may
produce a 5xx, and every response must match the schema the app publishes.

Calls carry an admin's bearer token and an API key holding `keys:verify`, so the fuzzer reaches past
authentication into every handler.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.helpers import PASSWORD
from tests.process import KeystileServer

pytestmark = pytest.mark.process

EMAIL = "fuzz-admin@example.com"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeystileServer]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    env = {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'keystile.db'}"}
    with KeystileServer(env, cwd=directory) as running:
        yield running
    assert running.returncode in (0, -15), running.log
    assert "Traceback" not in running.log, running.log


@pytest.fixture(scope="module")
def credentials(server: KeystileServer) -> dict[str, str]:
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/auth/register", json={"email": EMAIL, "password": PASSWORD}).status_code == 201
        with sqlite3.connect(server.cwd / "keystile.db") as database:
            database.execute("UPDATE users SET is_admin = 1 WHERE email = ?", (EMAIL,))
        token = client.post("/auth/token", data={"username": EMAIL, "password": PASSWORD}).json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        key = client.post("/keys/", json={"name": "fuzzer", "scopes": ["keys:verify"]}, headers=bearer).json()["key"]
    return bearer | {"X-API-Key": key}


def test_no_input_produces_a_server_error_or_a_response_outside_the_schema(
    server: KeystileServer, credentials: dict[str, str]
) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call_operation(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=server.url, headers=credentials, checks=[not_a_server_error, response_schema_conformance]
            )

        call_operation()
