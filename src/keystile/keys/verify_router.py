"""`POST /v1/keys/verify`: the hot path as a service, for gateways and other services (README, "Verify")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, Response, Security, status
from fastapi.security import SecurityScopes
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress

from keystile.deps import KeystileDep, OptionalUser
from keystile.fastapi import authenticate_api_key
from keystile.keys.records import Outcome
from keystile.ratelimit.base import Decision

router = APIRouter(prefix="/v1/keys", tags=["verify"])

VERIFY_SCOPE = "keys:verify"


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=4096, description="The key to check, as presented to you")
    scopes: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=50)
    cost: int = Field(default=1, ge=0, le=1_000_000, description="How much this call draws from rate limit and quota")
    ip: IPvAnyAddress | None = Field(default=None, description="The client's address, for keys with an allowlist")


class RateLimitState(BaseModel):
    limit: int
    remaining: int
    reset_seconds: int

    @classmethod
    def from_decision(cls, decision: Decision | None) -> RateLimitState | None:
        if decision is None:
            return None
        return cls(limit=decision.limit, remaining=decision.remaining, reset_seconds=decision.reset_seconds)


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


async def _authorize_caller(
    request: Request,
    response: Response,
    user: OptionalUser,
) -> None:
    """An admin's bearer token, or an API key holding `keys:verify`."""
    if user is not None:
        if not user.is_admin:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Admin privileges or scope keys:verify required")
        return
    if not request.headers.get("x-api-key"):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Admin bearer token or API key with scope keys:verify required",
            headers={"WWW-Authenticate": "Bearer, APIKey"},
        )
    await authenticate_api_key(request, response, SecurityScopes([VERIFY_SCOPE]))


@router.post(
    "/verify",
    response_model=VerifyResponse,
    summary="Check a key for another service",
    description=(
        "Caller: an admin's Bearer JWT, or an API key with scope `keys:verify`. Always 200 for a well-formed call; "
        "`code` says why a key is not valid. A malformed key, an unknown key and a wrong secret are all `NOT_FOUND`."
    ),
    responses={401: {"description": "No caller credentials"}, 403: {"description": "Caller not allowed"}},
    openapi_extra={"security": [{"APIKeyHeader": [VERIFY_SCOPE]}]},  # joins the bearer token's entry
)
async def verify(
    body: VerifyRequest,
    keystile: KeystileDep,
    _caller: Annotated[None, Security(_authorize_caller)],
) -> VerifyResponse:
    verification = await keystile.verifier.verify(
        body.key, required_scopes=body.scopes, client_ip=body.ip, cost=body.cost
    )
    record = verification.key
    if record is None:
        return VerifyResponse(valid=False, code=verification.outcome)
    return VerifyResponse(
        valid=verification.valid,
        code=verification.outcome,
        api_key_id=record.id,
        owner_id=record.user_id,
        name=record.name,
        scopes=sorted(record.scopes),
        metadata=dict(record.metadata),
        expires_at=record.expires_at,
        ratelimit=RateLimitState.from_decision(verification.ratelimit),
        quota_remaining=verification.quota_remaining,
    )
