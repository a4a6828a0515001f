from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from keystile.db import MAX_ID
from keystile.keys.models import ApiKey
from keystile.net import parse_network
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.refill import QuotaRefill

logger = logging.getLogger(__name__)

MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 32
MAX_SCOPES = 50
MAX_IP_ALLOWLIST = 100
MAX_EXPIRES_IN_SECONDS = 10 * 365 * 86_400

# Characters that reorder how text is displayed (Unicode bidi controls): a name holding them can show as another
# name in a list ("Trojan Source", CVE-2021-42574).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _readable_name(name: str) -> str:
    if not name.strip():
        raise ValueError("name must not be blank")
    if not _BIDI_CONTROLS.isdisjoint(name):
        raise ValueError("name must not contain bidirectional control characters")
    return name


def _unique(values: list[str]) -> list[str]:
    """The values in their order, each once: a repeated scope grants nothing more."""
    return list(dict.fromkeys(values))


# Printable text without control characters: NUL in particular is rejected by PostgreSQL, so reject it first.
Name = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$"), AfterValidator(_readable_name)
]
Scope = Annotated[str, Field(pattern=r"^[a-z][a-z0-9:._-]{0,63}$")]
Scopes = Annotated[list[Scope], Field(max_length=MAX_SCOPES), AfterValidator(_unique)]


def _valid_networks(entries: list[str]) -> list[str]:
    normalized = []
    for entry in entries:
        try:
            network = str(parse_network(entry))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR block without a zone id: {entry[:64]!r}") from None
        if network not in normalized:  # a repeated entry adds nothing
            normalized.append(network)
    return normalized


def _depth(value: Any) -> int:
    """Levels of objects and arrays: `{}` is 1, `{"a": {}}` is 2. Iterative, so no depth can exhaust the stack."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        current, level = pending.pop()
        children = current.values() if isinstance(current, dict) else current if isinstance(current, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_METADATA_DEPTH:
            break
        pending.extend((child, level + 1) for child in children)
    return deepest


def readable_metadata(row: ApiKey) -> dict[str, Any]:
    """The row's metadata, or `{}` when it nests deeper than any request may store (a row written before that limit,
    or by hand): one unreadable value must not fail every list and answer that holds its key."""
    return readable_metadata_of(row.id, row.key_metadata)


def readable_metadata_of(api_key_id: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """`readable_metadata` from the column values (a cache miss reads columns, not rows)."""
    if _depth(metadata) > MAX_METADATA_DEPTH:
        logger.warning(
            "key %d has metadata nested deeper than %d levels; it is shown as {}", api_key_id, MAX_METADATA_DEPTH
        )
        return {}
    return metadata


def _small_json_object(value: dict[str, Any]) -> dict[str, Any]:
    # Depth first: a deeply nested value could not even be encoded to measure its size, and once stored it would
    # fail every response that serialises the key.
    if _depth(value) > MAX_METADATA_DEPTH:
        raise ValueError(f"metadata must not nest deeper than {MAX_METADATA_DEPTH} levels")
    try:
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or Infinity: not JSON, and PostgreSQL's JSON would store them as null
        raise ValueError("metadata must not contain NaN or Infinity") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must encode to at most {MAX_METADATA_BYTES} bytes of JSON")
    if "\\u0000" in encoded:
        raise ValueError("metadata must not contain NUL characters")
    return value


IdentityId = Annotated[int, Field(ge=1, le=MAX_ID, description="an identity of yours whose limits the key shares")]

IpAllowlist = Annotated[
    list[Annotated[str, Field(max_length=64)]],
    Field(max_length=MAX_IP_ALLOWLIST),
    AfterValidator(_valid_networks),
]
Metadata = Annotated[dict[str, Any], AfterValidator(_small_json_object)]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    scopes: Scopes = Field(default_factory=list)
    expires_at: AwareDatetime | None = None
    expires_in: int | None = Field(default=None, ge=1, le=MAX_EXPIRES_IN_SECONDS, description="seconds from now")
    rate_limit: RateLimitPolicy | None = None
    quota: int | None = Field(default=None, ge=0, le=2**62, description="total requests allowed; null: unlimited")
    quota_refill: QuotaRefill | None = Field(default=None, description="without `quota`, the quota starts at `amount`")
    ip_allowlist: IpAllowlist = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    identity_id: IdentityId | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        return self


class KeyUpdate(BaseModel):
    """A partial update: only the fields present change; `null` clears expires_at, rate_limit and quota."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    scopes: Scopes | None = None
    expires_at: AwareDatetime | None = None
    expires_in: int | None = Field(default=None, ge=1, le=MAX_EXPIRES_IN_SECONDS, description="seconds from now")
    rate_limit: RateLimitPolicy | None = None
    quota: int | None = Field(default=None, ge=0, le=2**62)
    quota_refill: QuotaRefill | None = None
    ip_allowlist: IpAllowlist | None = None
    metadata: Metadata | None = None
    identity_id: IdentityId | None = Field(default=None, description="null: the key leaves its identity")
    enabled: bool | None = Field(
        default=None, strict=True, description="false pauses the key until true; a revoked key stays off"
    )

    @model_validator(mode="after")
    def _consistent(self) -> KeyUpdate:
        if "expires_at" in self.model_fields_set and "expires_in" in self.model_fields_set:
            raise ValueError("give expires_at or expires_in, not both")
        for required in ("name", "scopes", "ip_allowlist", "metadata", "expires_in", "enabled"):
            if required in self.model_fields_set and getattr(self, required) is None:
                raise ValueError(f"{required} cannot be null")
        return self


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(default=0, ge=0, le=604_800, description="how long the old key keeps working")


class KeyRead(BaseModel):
    id: int
    hint: str
    name: str
    owner_id: int
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    rate_limit: RateLimitPolicy | None
    quota_remaining: int | None
    quota_refill: QuotaRefill | None
    quota_refilled_at: datetime | None
    ip_allowlist: list[str]
    metadata: dict[str, Any]
    is_active: bool
    enabled: bool
    identity_id: int | None
    last_used_at: datetime | None
    use_count: int
    revoked_at: datetime | None
    rotated_from: int | None

    @classmethod
    def from_row(cls, row: ApiKey) -> KeyRead:
        return cls(
            id=row.id,
            hint=row.hint,
            name=row.name,
            owner_id=row.user_id,
            scopes=row.scopes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            rate_limit=row.rate_limit,
            quota_remaining=row.quota_remaining,
            quota_refill=row.quota_refill,
            quota_refilled_at=row.quota_refilled_at,
            ip_allowlist=row.ip_allowlist,
            metadata=readable_metadata(row),
            is_active=row.is_active,
            enabled=row.enabled,
            identity_id=row.identity_id,
            last_used_at=row.last_used_at,
            use_count=row.use_count,
            revoked_at=row.revoked_at,
            rotated_from=row.rotated_from,
        )


class KeyCreated(KeyRead):
    key: str = Field(description="The raw key. Shown this once: only a hash is stored, so copy it now.")
