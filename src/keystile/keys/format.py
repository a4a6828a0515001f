"""The key format (README, "Key format"): `<prefix>_<key_id>_<secret><checksum>`.

Everything here is pure and does no I/O, so a malformed or mistyped key is rejected before any database, cache or
Redis is touched. Hashing is HMAC-SHA256 with a server-side pepper: keys carry 256 bits of randomness, so a slow
password hash would add latency without adding security (an attacker cannot enumerate a 2**256 space), while the
pepper means a stolen database alone does not let anyone test candidate keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LENGTH = 12
SECRET_BYTES = 32
SECRET_LENGTH = 43  # ceil(256 / log2(62)) base62 digits hold 32 bytes
CHECKSUM_LENGTH = 6  # 62**6 > 2**32 holds any CRC-32
MAX_PRESENTED_KEY_LENGTH = 512
HASH_SCHEME = "hmac-sha256-v1"
PREFIX_PATTERN = r"[a-z][a-z0-9_]{0,15}"

_SHA256_BLOCK = 64
_TAIL_LENGTH = SECRET_LENGTH + CHECKSUM_LENGTH


def secret_scanner_regex(prefix: str = "ks") -> str:
    """The regex published in the README for secret scanners."""
    return rf"\b{re.escape(prefix)}_[0-9A-Za-z]{{{KEY_ID_LENGTH}}}_[0-9A-Za-z]{{{_TAIL_LENGTH}}}\b"


def base62_encode(number: int, width: int) -> str:
    digits = []
    while number:
        number, remainder = divmod(number, 62)
        digits.append(BASE62_ALPHABET[remainder])
    encoded = "".join(reversed(digits))
    if len(encoded) > width:
        raise ValueError(f"{number} does not fit in {width} base62 digits")
    return encoded.rjust(width, "0")


def checksum(body: str) -> str:
    """CRC-32 of `<prefix>_<key_id>_<secret>` in 6 base62 digits: catches typos and truncation without I/O."""
    return base62_encode(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    raw: str = field(repr=False)

    @property
    def hint(self) -> str:
        return hint_for(self.raw)


def generate_key(prefix: str) -> NewKey:
    key_id = "".join(secrets.choice(BASE62_ALPHABET) for _ in range(KEY_ID_LENGTH))
    secret = base62_encode(int.from_bytes(secrets.token_bytes(SECRET_BYTES), "big"), SECRET_LENGTH)
    body = f"{prefix}_{key_id}_{secret}"
    return NewKey(key_id=key_id, raw=body + checksum(body))


def key_id_of(presented: str, prefix: str) -> str | None:
    """The key_id of a well-formed key of this deployment (right shape, right checksum), else None. No I/O."""
    if len(presented) > MAX_PRESENTED_KEY_LENGTH:
        return None
    # The prefix may itself contain "_", but key_id and tail never do, so one anchored pattern splits it exactly.
    match = _key_pattern(prefix).fullmatch(presented)
    if match is None:
        return None
    # The checksum is not a secret (anyone holding the key can compute it), so a plain comparison is fine here.
    if _base62_decode(presented[-CHECKSUM_LENGTH:]) != zlib.crc32(presented[:-CHECKSUM_LENGTH].encode("ascii")):
        return None
    key_id: str = match[1]
    return key_id


@cache
def _key_pattern(prefix: str) -> re.Pattern[str]:
    # re.ASCII keeps [0-9A-Za-z] from matching anything outside ASCII.
    return re.compile(rf"{re.escape(prefix)}_([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_[0-9A-Za-z]{{{_TAIL_LENGTH}}}", re.ASCII)


# Two digits at a time: three lookups decode a checksum (62**2 = 3844 entries, built once). bench_verify's
# "malformed" case is what this table and the default-argument lookup below keep under its target.
_BASE62_PAIR_VALUE = {
    high + low: 62 * high_value + low_value
    for high_value, high in enumerate(BASE62_ALPHABET)
    for low_value, low in enumerate(BASE62_ALPHABET)
}


def _base62_decode(digits: str, pair_value: dict[str, int] = _BASE62_PAIR_VALUE) -> int:
    """Decode the 6 checksum digits (only ever called on text the key pattern has matched)."""
    return (pair_value[digits[0:2]] * 3844 + pair_value[digits[2:4]]) * 3844 + pair_value[digits[4:6]]


def derive_pepper(secret_key: str) -> bytes:
    """A key for hashing API keys, separate from the JWT signing key though both come from SECRET_KEY."""
    return hmac.new(secret_key.encode(), b"keystile api-key pepper v1", hashlib.sha256).digest()


def key_hashers(pepper: bytes) -> dict[str, Callable[[str], bytes]]:
    """The digest function of each hash scheme, by the name stored in `api_keys.hash_scheme`.

    Verification picks the function by the row's scheme, so a new scheme (a rotated pepper, another MAC) is one more
    entry here and keys hashed under an older one keep verifying (docs/DESIGN.md, "Keys").
    """
    return {HASH_SCHEME: _hmac_sha256(pepper)}


def hash_key(raw: str, pepper: bytes) -> str:
    """HMAC-SHA256 (RFC 2104) of the key with the pepper, hex: what the database stores (scheme `HASH_SCHEME`)."""
    return _hmac_sha256(pepper)(raw).hex()


@cache
def _hmac_sha256(pepper: bytes) -> Callable[[str], bytes]:
    """HMAC-SHA256 keyed with `pepper`, as a function of the key, giving bytes (the hot path compares these).

    The pepper's inner and outer hash states are computed once here and copied per key, which halves the cost of
    `hmac.new` (bench_verify, "cache hit"); tests check the result equals `hmac.new(pepper, raw, sha256)`.
    """
    block = (hashlib.sha256(pepper).digest() if len(pepper) > _SHA256_BLOCK else pepper).ljust(_SHA256_BLOCK, b"\0")
    inner_start = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
    outer_start = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))

    def digest(raw: str) -> bytes:
        inner = inner_start.copy()
        inner.update(raw.encode("ascii"))
        outer = outer_start.copy()
        outer.update(inner.digest())
        return outer.digest()

    return digest


def hashes_match(presented_hash: bytes, stored_hash: bytes) -> bool:
    return hmac.compare_digest(presented_hash, stored_hash)


def hint_for(raw: str) -> str:
    """What the API shows instead of the key: prefix, key_id and last 4 characters, e.g. `ks_4fZq8Lr2Xy0B_…Z01a`."""
    head, _, _ = raw.rpartition("_")
    return f"{head}_…{raw[-4:]}"
