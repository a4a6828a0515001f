"""Standard Webhooks signatures (https://www.standardwebhooks.com, "Signature scheme").

    webhook-signature: v1,<base64 of HMAC-SHA256(secret bytes, "<webhook-id>.<webhook-timestamp>.<body>")>

The secret is `whsec_` followed by the base64 of its bytes; the HMAC is keyed with those bytes, not the text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105  (a prefix, not a secret)
# The specification asks for 24 to 64 bytes; 32 matches the HMAC-SHA256 block-free key length.
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, *, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str, *, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (the timestamp is the attempt's, so each retry is signed
    anew while `webhook-id` stays the same)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id=message_id, timestamp=timestamp, body=body),
    }
