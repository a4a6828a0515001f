from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from keystile.identities.models import Identity
from keystile.keys.schemas import Metadata, _readable_name
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.refill import MAX_QUOTA, QuotaRefill

# The owner's own name for a customer (an account id, an email): printable text, as key names are.
ExternalId = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$"), AfterValidator(_readable_name)
]
Quota = Annotated[int, Field(ge=0, le=MAX_QUOTA, description="requests left, shared by the identity's keys")]


class IdentityCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_id: ExternalId
    metadata: Metadata = Field(default_factory=dict)
    rate_limit: RateLimitPolicy | None = None
    quota: Quota | None = None
    quota_refill: QuotaRefill | None = Field(default=None, description="without `quota`, the quota starts at `amount`")


class IdentityUpdate(BaseModel):
    """A partial update: only the fields present change; `null` clears rate_limit, quota and quota_refill."""

    model_config = ConfigDict(extra="forbid")

    external_id: ExternalId | None = None
    metadata: Metadata | None = None
    rate_limit: RateLimitPolicy | None = None
    quota: Quota | None = None
    quota_refill: QuotaRefill | None = None

    @model_validator(mode="after")
    def _not_null(self) -> IdentityUpdate:
        for required in ("external_id", "metadata"):
            if required in self.model_fields_set and getattr(self, required) is None:
                raise ValueError(f"{required} cannot be null")
        return self


class IdentityRead(BaseModel):
    id: int
    external_id: str
    metadata: dict[str, Any]
    rate_limit: RateLimitPolicy | None
    quota_remaining: int | None
    quota_refill: QuotaRefill | None
    quota_refilled_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Identity) -> IdentityRead:
        return cls(
            id=row.id,
            external_id=row.external_id,
            metadata=row.identity_metadata,
            rate_limit=row.rate_limit,
            quota_remaining=row.quota_remaining,
            quota_refill=row.quota_refill,
            quota_refilled_at=row.quota_refilled_at,
            created_at=row.created_at,
        )
