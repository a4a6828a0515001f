from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keystile.app import create_app, create_served_app
from keystile.clock import FakeClock
from keystile.metrics import WORKER_METRICS_DIR, Metrics, worker_directory
from tests.conftest import TEST_SECRET_KEY, MakeClient, make_settings
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


async def test_metrics_of_one_process_are_prometheus_clients_own_exposition(client: KeystileClient) -> None:
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.content == generate_latest(client.keystile.metrics.registry)


def verifications(exposition: bytes) -> dict[str, float]:
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
        if sample.name == "keystile_verifications_total"
    }


async def test_shared_metrics_are_the_totals_over_every_worker_including_stopped_ones(tmp_path: Path) -> None:
    first, second = Metrics(), Metrics()
    async with second.shared(tmp_path):
        async with first.shared(tmp_path):
            first.verified("VALID", 0.001)
            first.verified("NOT_FOUND")
            first.rate_limited.labels("quota").inc()
        second.verified("VALID", 0.002)  # counted live; the first worker's counts come from its last snapshot

        exposition = second.render()

    assert verifications(exposition) == {"VALID": 2, "NOT_FOUND": 1}
    families = {family.name: family for family in text_string_to_metric_families(exposition.decode())}
    samples = {(s.name, tuple(s.labels.values())): s.value for f in families.values() for s in f.samples}
    assert samples[("keystile_verification_seconds_count", ())] == 2
    assert samples[("keystile_verification_seconds_bucket", ("0.001",))] == 1
    assert samples[("keystile_verification_seconds_bucket", ("0.0025",))] == 2
    assert samples[("keystile_rate_limited_requests_total", ("quota",))] == 1
    assert not any(name.endswith("_created") for name, _ in samples)  # one process's start time does not add up


async def test_a_sharing_worker_publishes_its_counts_periodically(tmp_path: Path) -> None:
    first, second = Metrics(), Metrics()
    async with first.shared(tmp_path, every=0.01), second.shared(tmp_path, every=0.01):
        first.verified("VALID", 0.001)
        deadline = asyncio.get_running_loop().time() + 5
        while verifications(second.render()) != {"VALID": 1}:
            assert asyncio.get_running_loop().time() < deadline, "the first worker's snapshot never arrived"
            await asyncio.sleep(0.01)  # yields to the periodic writer; bounded by the deadline


async def test_metrics_stop_adding_up_once_no_longer_shared(tmp_path: Path) -> None:
    other, metrics = Metrics(), Metrics()
    async with other.shared(tmp_path):
        other.verified("VALID", 0.001)
    async with metrics.shared(tmp_path):
        pass

    assert verifications(metrics.render()) == {}
    assert metrics.render() == generate_latest(metrics.registry)


def test_serve_makes_a_snapshot_directory_only_for_several_workers_and_removes_it_after() -> None:
    with worker_directory(1):
        assert WORKER_METRICS_DIR not in os.environ

    with worker_directory(2):
        directory = Path(os.environ[WORKER_METRICS_DIR])
        assert directory.is_dir()
        (directory / "worker-1-00000000.json").write_text("{}")

    assert WORKER_METRICS_DIR not in os.environ
    assert not directory.exists()


async def test_served_app_told_of_a_worker_directory_reports_the_totals(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "keystile.db"
    shutil.copyfile(sqlite_template, database)
    directory = tmp_path / "workers"
    directory.mkdir()
    another_worker = Metrics()
    async with another_worker.shared(directory):
        another_worker.verified("REVOKED", 0.001)
    monkeypatch.setenv("KEYSTILE_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    monkeypatch.setenv("KEYSTILE_SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv(WORKER_METRICS_DIR, str(directory))
    app = create_served_app()

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            response = await client.get("/metrics")
        assert len(list(directory.glob("worker-*.json"))) == 2  # its own snapshot beside the other worker's

    assert verifications(response.content) == {"REVOKED": 1}
