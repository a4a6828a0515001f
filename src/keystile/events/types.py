"""The event types of API.md section 9, and the ones an endpoint may subscribe to."""

from __future__ import annotations

from typing import Literal

KEY_CREATED = "key.created"
KEY_UPDATED = "key.updated"
KEY_REVOKED = "key.revoked"
KEY_ROTATED = "key.rotated"
KEY_DISABLED = "key.disabled"
KEY_ENABLED = "key.enabled"
KEY_EXPIRING = "key.expiring"
KEY_EXPIRED = "key.expired"
KEY_QUOTA_LOW = "key.quota_low"
KEY_QUOTA_EXHAUSTED = "key.quota_exhausted"
KEY_RATE_LIMITED = "key.rate_limited"
KEY_LEAKED = "key.leaked"
WEBHOOK_TEST = "webhook.test"

EventType = Literal[
    "key.created",
    "key.updated",
    "key.revoked",
    "key.rotated",
    "key.disabled",
    "key.enabled",
    "key.expiring",
    "key.expired",
    "key.quota_low",
    "key.quota_exhausted",
    "key.rate_limited",
    "key.leaked",
    "webhook.test",
]
