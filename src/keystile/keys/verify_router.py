"""`POST /v1/keys/verify`: the hot path as a service, for gateways and other services (README, "Verify")."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keystile.callers import CallerCheck
from keystile.instance import keystile_of
from keystile.keys.records import Outcome, Verification
from keystile.net import parse_ip
from keystile.ratelimit.base import Decision

router = APIRouter(prefix="/v1/keys", tags=["verify"])

VERIFY_SCOPE = "keys:verify"

# The answers about the caller; the key being checked is always answered with a 200.
CALLER = CallerCheck(
    VERIFY_SCOPE,
    forbidden="A bearer token of a non-admin, or a caller key without `keys:verify` or from a refused address",
)


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=4096, description="The key to check, as presented to you")
    scopes: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=50)
    cost: int = Field(default=1, ge=0, le=1_000_000, description="How much this call draws from rate limit and quota")
    ip: str | None = Field(
        default=None, max_length=64, strict=True, description="The client's address, for keys with an allowlist"
    )

    @field_validator("ip")
    @classmethod
    def _ip_is_an_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_ip(value)
        return value


class RateLimitState(BaseModel):
    limit: int
    remaining: int
    reset_seconds: int

    @classmethod
    def from_decision(cls, decision: Decision | None) -> RateLimitState | None:
        if decision is None:
            return None
        return cls(limit=decision.limit, remaining=decision.remaining, reset_seconds=decision.reset_seconds)


class IdentityAnswer(BaseModel):
    id: int
    external_id: str
    metadata: dict[str, Any]


class VerifyResponse(BaseModel):
    valid: bool
    code: Outcome
    api_key_id: int | None = None
    owner_id: int | None = None
    name: str | None = None
    scopes: list[str] | None = None
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None
    ratelimit: RateLimitState | None = None
    quota_remaining: int | None = None
    identity: IdentityAnswer | None = None


def _parsed(body: bytes) -> VerifyRequest:
    """The body, validated by pydantic straight from the JSON bytes (one pass, no intermediate dict)."""
    try:
        return VerifyRequest.model_validate_json(body)
    except ValidationError as error:
        errors = [{**detail, "loc": ("body", *detail["loc"])} for detail in error.errors(include_input=False)]
        raise RequestValidationError(errors) from None


def _answer(verification: Verification) -> bytes:
    """The verify answer as JSON bytes. Built by hand: it is the whole response of the gateway's hot path, and a
    response model would validate it twice more (docs/PERFORMANCE.md, "The gateway path")."""
    record = verification.key
    if record is None:
        return _NOT_FOUND_ANSWER if verification.outcome is Outcome.NOT_FOUND else _bare(verification.outcome)
    decision = verification.binding_ratelimit
    answer = {
        "valid": verification.outcome is Outcome.VALID,
        "code": verification.outcome.value,
        "api_key_id": record.id,
        "owner_id": record.user_id,
        "name": record.name,
        "scopes": sorted(record.scopes),
        "metadata": dict(record.metadata),
        "expires_at": _utc_text(record.expires_at),
        "ratelimit": None
        if decision is None
        else {"limit": decision.limit, "remaining": decision.remaining, "reset_seconds": decision.reset_seconds},
        "quota_remaining": verification.quota_remaining,
        "identity": None if record.identity is None else record.identity.answer(),
    }
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()


def _utc_text(moment: datetime | None) -> str | None:
    """ISO 8601 with `Z`, as pydantic writes the UTC datetimes of every other answer."""
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _bare(outcome: Outcome) -> bytes:
    return VerifyResponse(valid=False, code=outcome).model_dump_json().encode()


_NOT_FOUND_ANSWER = _bare(Outcome.NOT_FOUND)


@router.post(
    "/verify",
    summary="Check a key for another service",
    description=(
        "Caller: an admin's Bearer JWT (any key), or an API key with scope `keys:verify` (its owner's keys; another "
        "owner's key is `NOT_FOUND`; every key when an admin owns the caller key). Always 200 for a well-formed call; "
        "`code` says why a key is not valid. A malformed key, an unknown key and a wrong secret are all `NOT_FOUND`."
    ),
    responses={
        **CALLER.answers,
        200: {"model": VerifyResponse, "description": "The answer about the key"},
        422: {
            "description": "Validation Error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
        },
    },
    # The route reads its own body and caller (see `verify`), so the schema says what FastAPI would have derived.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": VerifyRequest.model_json_schema()}},
        },
        "security": [{"OAuth2PasswordBearer": []}, {"APIKeyHeader": [VERIFY_SCOPE]}],
    },
)
async def verify(request: Request) -> Response:
    """The gateway's hot path, so it takes the request whole: the caller is checked, the body parsed and the answer
    written here, without FastAPI's dependency resolution and response-model validation, which cost more than the
    two key checks themselves (docs/PERFORMANCE.md, "The gateway path"). Same answers as a declared route."""
    keystile = keystile_of(request)
    caller = await CALLER(request)
    body = _parsed(await request.body())
    verification = await keystile.verifier.verify(
        body.key,
        required_scopes=body.scopes,
        client_ip=parse_ip(body.ip) if body.ip is not None else None,
        cost=body.cost,
        owner_id=None if caller.is_admin else caller.user_id,  # an admin's call verifies every key
    )
    response = Response(_answer(verification), media_type="application/json")
    response.raw_headers.extend(caller.rate_limit_fields)
    return response
