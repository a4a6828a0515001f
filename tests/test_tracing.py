"""keystile.tracing: one span per verification with the outcome and the key's integer id, never key material, read
back from the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from keystile.keys.records import Outcome
from keystile.keys.verification import Verifier
from keystile.tracing import API_KEY_ID, ERROR_TYPE, OUTCOME, SPAN_NAME, TracedVerifier, traced
from tests.helpers import KeystileClient, create_key, user_headers


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def verifier(client: KeystileClient, exporter: InMemorySpanExporter) -> TracedVerifier:
    """The running instance's verifier, traced into `exporter` (a provider of the test's own: the global one can be
    set only once per process)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return traced(client.keystile.verifier, tracer_provider=provider)


def assert_no_key_material(span: ReadableSpan, raw: str) -> None:
    _prefix, key_id, secret = raw.split("_")
    recorded = repr((span.name, dict(span.attributes or {}), span.events, span.status.description))
    for part in (raw, key_id, secret):
        assert part not in recorded


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    assert span.name == SPAN_NAME
    return span


async def test_a_valid_key_is_a_span_with_its_outcome_and_id(
    client: KeystileClient, verifier: TracedVerifier, exporter: InMemorySpanExporter
) -> None:
    created = await create_key(client, await user_headers(client))

    verification = await verifier.verify(created["key"])

    assert verification.outcome is Outcome.VALID
    span = only_span(exporter)
    assert dict(span.attributes or {}) == {OUTCOME: "VALID", API_KEY_ID: created["id"]}
    assert span.status.status_code is StatusCode.UNSET
    assert_no_key_material(span, created["key"])


async def test_a_refused_known_key_names_its_id(
    client: KeystileClient, verifier: TracedVerifier, exporter: InMemorySpanExporter
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    assert (await client.post(f"/keys/{created['id']}/revoke", headers=headers)).status_code == 200

    await verifier.verify(created["key"])

    span = only_span(exporter)
    assert dict(span.attributes or {}) == {OUTCOME: "REVOKED", API_KEY_ID: created["id"]}
    assert_no_key_material(span, created["key"])


@pytest.mark.parametrize("garbage", ["invalid-key-here", "ks_" + "a" * 70])
async def test_an_unknown_key_is_a_span_without_an_id(
    verifier: TracedVerifier, exporter: InMemorySpanExporter, garbage: str
) -> None:
    await verifier.verify(garbage)

    assert dict(only_span(exporter).attributes or {}) == {OUTCOME: "NOT_FOUND"}


async def test_a_failed_verification_is_an_error_span_naming_only_the_exception_type(
    client: KeystileClient, verifier: TracedVerifier, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await create_key(client, await user_headers(client))

    async def failing(self: Verifier, *args: Any) -> Any:
        raise ConnectionError(f"lost the database while loading {args[0]} for {args[1]}")

    monkeypatch.setattr(Verifier, "_verify", failing)
    with pytest.raises(ConnectionError):
        await verifier.verify(created["key"])

    span = only_span(exporter)
    assert dict(span.attributes or {}) == {ERROR_TYPE: "ConnectionError"}
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, "ConnectionError")
    assert span.events == ()
    assert_no_key_material(span, created["key"])


async def test_the_traced_verifier_shares_every_collaborator(client: KeystileClient, verifier: TracedVerifier) -> None:
    plain = client.keystile.verifier

    assert isinstance(verifier, Verifier)
    assert (verifier.cache, verifier.limits, verifier.quotas, verifier.usage, verifier.metrics) == (
        plain.cache,
        plain.limits,
        plain.quotas,
        plain.usage,
        plain.metrics,
    )


async def test_verifications_through_the_app_are_spans_once_the_instance_uses_the_traced_verifier(
    client: KeystileClient, verifier: TracedVerifier, exporter: InMemorySpanExporter
) -> None:
    created = await create_key(client, await user_headers(client))
    client.keystile.verifier = verifier  # what Keystile(...) does itself with KEYSTILE_OTEL_ENABLED=true

    response = await client.get("/data/export", headers={"X-API-Key": created["key"]})

    assert response.status_code == 200
    span = only_span(exporter)
    assert dict(span.attributes or {}) == {OUTCOME: "VALID", API_KEY_ID: created["id"]}
