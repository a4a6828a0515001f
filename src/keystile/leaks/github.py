"""GitHub secret scanning partner alerts: the signature check (docs.github.com, "Secret scanning partner program").

GitHub POSTs a JSON array of `{token, type, url, source}` with two headers: `Github-Public-Key-Identifier` names one
of its published public keys, `Github-Public-Key-Signature` is the base64 of an ECDSA (P-256, SHA-256) DER signature
of the raw body. The keys come from KEYSTILE_GITHUB_SCANNING_KEYS, a file shaped like GitHub's
https://api.github.com/meta/public_keys/secret_scanning (`{"public_keys": [{"key_identifier", "key", ...}]}`). The
file is read off the event loop, and read again (at most once a minute) when an unknown identifier arrives, so
adding GitHub's new key to the file is enough when GitHub rotates.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

logger = logging.getLogger(__name__)

IDENTIFIER_HEADER = "github-public-key-identifier"
SIGNATURE_HEADER = "github-public-key-signature"
RELOAD_SECONDS = 60.0


class GitHubKeys:
    def __init__(self, path: Path, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._monotonic = monotonic
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._loaded_at: float | None = None

    def __repr__(self) -> str:
        return f"GitHubKeys(path={str(self._path)!r}, keys={len(self._keys)})"

    async def verify(self, body: bytes, identifier: str | None, signature: str | None) -> bool:
        """Whether `signature` is a valid signature of `body` by the key GitHub names `identifier`."""
        if not identifier or not signature:
            return False
        key = await self._key(identifier)
        if key is None:
            return False
        try:
            der = base64.b64decode(signature, validate=True)
            key.verify(der, body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    async def _key(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        stale = self._loaded_at is None or self._monotonic() - self._loaded_at >= RELOAD_SECONDS
        if identifier not in self._keys and stale:
            self._loaded_at = self._monotonic()
            try:
                self._keys = await asyncio.to_thread(_load, self._path)
            except (OSError, ValueError) as error:
                logger.error("cannot read KEYSTILE_GITHUB_SCANNING_KEYS (%s): %s", self._path, error)
        return self._keys.get(identifier)


def _load(path: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    document = json.loads(path.read_text())
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for entry in document.get("public_keys", []):
        key = serialization.load_pem_public_key(str(entry["key"]).encode())
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys[str(entry["key_identifier"])] = key
    return keys
