"""Webhook signing secrets at rest: AES-256-GCM under a key derived from KEYSTILE_SECRET_KEY.

A signing secret has to be read back to sign each delivery, so it cannot be stored as a hash like API keys are.
Sealing it means a copy of the database (a backup, a replica) does not hand out the secrets that let anyone forge
keystile's webhooks; the key never leaves the process's settings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = "v1."
_NONCE_BYTES = 12  # the GCM nonce size NIST SP 800-38D recommends; random per secret
_ASSOCIATED_DATA = b"keystile webhook secret"


class SecretBox:
    def __init__(self, secret_key: str) -> None:
        key = hmac.new(secret_key.encode(), b"keystile webhook secrets v1", hashlib.sha256).digest()
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretBox()"

    def seal(self, secret: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), _ASSOCIATED_DATA)
        return _VERSION + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str) -> str:
        raw = base64.b64decode(sealed.removeprefix(_VERSION))
        return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _ASSOCIATED_DATA).decode()
