"""Bounded schemathesis runs against a real `keystile serve`: no input the schema allows may produce a 5xx, and every
response must match the schema the app publishes, status code included.

- Stateless, as an admin (bearer token): every operation. Where an API key is accepted, schemathesis adds made-up
  keys of its own, so the 401 and 429 answers are checked too.
- Stateless, as an API key holding `keys:verify`: the operations a key opens (`/v1/keys/verify`, `/data/export`).
- Stateful, as the admin: sequences that follow the OpenAPI links of an issued key (POST /keys/ and its rotation) to
  GET, PATCH, revoke, rotate it and read its usage, so the handlers see real keys in every state, not only made-up
  ids. The state machine is built from the `/keys/` operations alone (see `key_schema`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.helpers import PASSWORD
from tests.process import KeystileServer

pytestmark = pytest.mark.process

EMAIL = "fuzz-admin@example.com"
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
SCENARIOS = 100
RESTARTS = 20
LINKED = {
    "GET /keys/{key_pk}",
    "PATCH /keys/{key_pk}",
    "POST /keys/{key_pk}/revoke",
    "POST /keys/{key_pk}/rotate",
    "GET /keys/{key_pk}/usage",  # a link schemathesis infers: the path parameter names the created key's `id`
}
STATEFUL = settings(
    phases=[Phase.generate],
    stateful_step_count=8,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeystileServer]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    env = {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'keystile.db'}"}
    with KeystileServer(env, cwd=directory) as running:
        yield running
    assert running.returncode in (0, -15), running.log
    assert "Traceback" not in running.log, running.log


@pytest.fixture(scope="module")
def admin(server: KeystileServer) -> dict[str, str]:
    """An admin's bearer token headers."""
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/auth/register", json={"email": EMAIL, "password": PASSWORD}).status_code == 201
        with sqlite3.connect(server.cwd / "keystile.db") as database:
            database.execute("UPDATE users SET is_admin = 1 WHERE email = ?", (EMAIL,))
        token = client.post("/auth/token", data={"username": EMAIL, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api_key(server: KeystileServer, admin: dict[str, str]) -> dict[str, str]:
    """A fresh `keys:verify` key of the admin's: the admin's own fuzzing may have revoked or changed earlier ones."""
    with httpx.Client(base_url=server.url) as client:
        created = client.post("/keys/", json={"name": "fuzzer", "scopes": ["keys:verify"]}, headers=admin)
    assert created.status_code == 201, created.text
    return {"X-API-Key": created.json()["key"]}


@pytest.fixture
def schema(server: KeystileServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.fixture
def key_schema(server: KeystileServer) -> schemathesis.BaseSchema:
    """The published document with only the `/keys/` paths (components kept whole, for their references), and
    without `identity_id` in the new key's body.

    schemathesis starts scenarios only at the operations its dependency analysis deems likely to succeed, and reads
    `identity_id` as a reference to an `Identity` that no operation produces (they answer `IdentityRead`): with it,
    POST /keys/ is never a start, and every scenario opens with a rotation of a made-up id (404). The identity of a
    key is fuzzed by the stateless runs above."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    document["paths"] = {path: item for path, item in document["paths"].items() if path.startswith("/keys/")}
    del document["components"]["schemas"]["KeyCreate"]["properties"]["identity_id"]
    return schemathesis.openapi.from_dict(document)


def fuzz(operations: list[schemathesis.APIOperation], base_url: str, headers: dict[str, str]) -> None:
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call_operation(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

        call_operation()


def test_as_an_admin_no_input_gives_a_server_error_or_a_response_outside_the_schema(
    server: KeystileServer, schema: schemathesis.BaseSchema, admin: dict[str, str]
) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    fuzz(operations, server.url, admin)


def test_as_an_api_key_no_input_gives_a_server_error_or_a_response_outside_the_schema(
    server: KeystileServer, schema: schemathesis.BaseSchema, api_key: dict[str, str]
) -> None:
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())
        if any("APIKeyHeader" in requirement for requirement in operation.definition.raw.get("security", []))
    ]
    forward_auth = {f"{method} /v1/auth" for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}
    assert {operation.label for operation in operations} == {"POST /v1/keys/verify", "GET /data/export"} | forward_auth

    fuzz(operations, server.url, api_key)


def test_sequences_on_issued_keys_give_no_server_error_or_response_outside_the_schema(
    server: KeystileServer, key_schema: schemathesis.BaseSchema, admin: dict[str, str]
) -> None:
    assert {operation.label for operation in (result.ok() for result in key_schema.get_all_operations())} >= LINKED
    completed = 0
    succeeded: set[str] = set()

    class Workflow(key_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": server.url, "headers": admin}

        def step(self, input: Any) -> Any:
            output = super().step(input)
            # Counted only when a link supplied the id: a made-up one that happens to exist proves no link.
            if input.transition is not None and input.is_applied and output.response.status_code < 300:
                succeeded.add(output.case.operation.label)
            return output

        def validate_response(
            self, response: Any, case: schemathesis.Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs, recorder=self.recorder)

        def teardown(self) -> None:
            nonlocal completed
            completed += 1
            super().teardown()

    # The server keeps its state between scenarios, so the same draws can meet a different server (a made-up id that
    # now exists) and Hypothesis stops with FlakyStrategyDefinition. Like schemathesis' own runner, go on with fresh
    # scenarios until SCENARIOS have run. A failing check raises a FailureGroup, which is never caught here.
    restarts = 0
    while completed < SCENARIOS:
        try:
            Workflow.run(settings=settings(STATEFUL, max_examples=SCENARIOS - completed))
            break
        except FlakyStrategyDefinition:
            restarts += 1
            assert restarts <= RESTARTS, f"only {completed} of {SCENARIOS} scenarios ran in {RESTARTS} restarts"

    assert succeeded >= LINKED, f"no link led to a success of {sorted(LINKED - succeeded)}"
