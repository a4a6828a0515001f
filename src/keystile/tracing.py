"""OpenTelemetry, with the `keystile[otel]` extra and KEYSTILE_OTEL_ENABLED=true: one span per verification.

The span (`keystile.verify`) carries the outcome and, when the presented key matched a stored one, that key's integer
id: never the presented key, its key_id or anything else taken from it. A verification that raises (the database or
the limiter down) ends the span with an error status naming only the exception's type: messages of database errors
quote query parameters, and the key_id is one of them.

Spans go to the tracer provider given, else to OpenTelemetry's global one, which the deployment configures as it
configures any service (`opentelemetry-instrument keystile serve` with the usual OTEL_* variables, or an embedding app's
`trace.set_tracer_provider`). Tracing is a subclass of `Verifier` swapped in once at start-up, so with tracing off the
hot path has not a single extra instruction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from keystile import __version__
from keystile.keys.records import Verification
from keystile.keys.verification import Verifier
from keystile.net import IPAddress

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode, Tracer, TracerProvider
except ImportError as error:  # pragma: no cover - only without the extra
    raise ImportError("KEYSTILE_OTEL_ENABLED=true needs OpenTelemetry: pip install 'keystile[otel]'") from error

SPAN_NAME = "keystile.verify"
OUTCOME = "keystile.outcome"
API_KEY_ID = "keystile.api_key_id"
ERROR_TYPE = "error.type"  # OpenTelemetry's semantic convention for why an operation failed


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TracedVerifier(Verifier):
    """A `Verifier` whose every `verify` is a span."""

    tracer: Tracer

    async def verify(
        self,
        presented: str,
        *,
        required_scopes: Collection[str] = (),
        client_ip: IPAddress | None = None,
        cost: int = 1,
        owner_id: int | None = None,
    ) -> Verification:
        # record_exception=False: the exception event would hold the message, which may quote the key_id.
        with self.tracer.start_as_current_span(
            SPAN_NAME, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                # Named, not super(): zero-argument super() fails in a slots dataclass before Python 3.14.
                verification = await Verifier.verify(
                    self,
                    presented,
                    required_scopes=required_scopes,
                    client_ip=client_ip,
                    cost=cost,
                    owner_id=owner_id,
                )
            except Exception as error:
                span.set_attribute(ERROR_TYPE, type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
                raise
            span.set_attribute(OUTCOME, verification.outcome.value)
            if verification.key is not None:
                span.set_attribute(API_KEY_ID, verification.key.id)
            return verification


def traced(verifier: Verifier, tracer_provider: TracerProvider | None = None) -> TracedVerifier:
    """`verifier` with a span around every verification; the same collaborators (cache, limits, quotas, ...)."""
    tracer = trace.get_tracer("keystile", __version__, tracer_provider=tracer_provider)
    parts = {field.name: getattr(verifier, field.name) for field in dataclasses.fields(verifier)}
    return TracedVerifier(**parts, tracer=tracer)
