"""Response bodies of the usage-history routes (API.md section 8)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

Interval = Literal["hour", "day"]


class UsageBucket(BaseModel):
    start: datetime = Field(description="The bucket's start (UTC); it lasts one `interval`")
    valid: int = Field(description="Verifications that admitted the key")
    rate_limited: int = Field(description="Refused by a rate limit (the key's or its identity's)")
    quota_exceeded: int = Field(description="Refused for want of quota (the key's or its identity's)")
    rejected: int = Field(description="Refused after the secret matched: disabled, expired, revoked, scope or address")


class UsageHistory(BaseModel):
    interval: Interval
    buckets: list[UsageBucket] = Field(description="Oldest first, one per interval, zero-filled")
