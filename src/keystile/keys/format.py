"""The key format of API.md section 1: `<prefix>_<key_id>_<secret><checksum>`.

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
from dataclasses import dataclass, field
from functools import cache
from typing import NamedTuple

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


class ParsedKey(NamedTuple):
    """A key whose shape and checksum are right. It may still be unknown or wrong: that takes a lookup.

    A NamedTuple rather than a frozen dataclass: it is built for every well-formed key presented, and a frozen
    dataclass's __init__ costs several times more. Its repr leaves the raw key out.
    """

    prefix: str
    key_id: str
    raw: str

    def __repr__(self) -> str:
        return f"ParsedKey(prefix={self.prefix!r}, key_id={self.key_id!r})"


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


def parse_key(presented: str, prefix: str) -> ParsedKey | None:
    """Return the parsed key, or None when it is not a well-formed key of this deployment."""
    key_id = key_id_of(presented, prefix)
    return None if key_id is None else ParsedKey(prefix, key_id, presented)


def key_id_of(presented: str, prefix: str) -> str | None:
    """The key_id of a well-formed key of this deployment, else None. The hot path's parse: it builds no object."""
    if len(presented) > MAX_PRESENTED_KEY_LENGTH:
        return None
    # The prefix may itself contain "_", but key_id and tail never do, so one anchored pattern splits it exactly.
    match = _key_pattern(prefix).fullmatch(presented)
    if match is None:
        return None
    # The checksum is not a secret (anyone holding the key can compute it), so a plain comparison is fine here;
    # decoding the 6 presented digits is cheaper than encoding the CRC, and this runs for every garbage key.
    if _base62_decode(presented[-CHECKSUM_LENGTH:]) != zlib.crc32(presented[:-CHECKSUM_LENGTH].encode("ascii")):
        return None
    key_id: str = match[1]
    return key_id


@cache
def _key_pattern(prefix: str) -> re.Pattern[str]:
    # re.ASCII keeps [0-9A-Za-z] from matching anything outside ASCII.
    return re.compile(rf"{re.escape(prefix)}_([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_[0-9A-Za-z]{{{_TAIL_LENGTH}}}", re.ASCII)


# Two digits at a time: three lookups decode a checksum (62**2 = 3844 entries, built once).
_BASE62_PAIR_VALUE = {
    high + low: 62 * high_value + low_value
    for high_value, high in enumerate(BASE62_ALPHABET)
    for low_value, low in enumerate(BASE62_ALPHABET)
}


def _base62_decode(digits: str, pair_value: dict[str, int] = _BASE62_PAIR_VALUE) -> int:
    """Decode the 6 checksum digits (only ever called on text the key pattern has matched).

    The table comes in as a default argument (a local lookup, not a global one): this runs for every key presented.
    """
    return (pair_value[digits[0:2]] * 3844 + pair_value[digits[2:4]]) * 3844 + pair_value[digits[4:6]]


def derive_pepper(secret_key: str) -> bytes:
    """A key for hashing API keys, separate from the JWT signing key though both come from SECRET_KEY."""
    return hmac.new(secret_key.encode(), b"keystile api-key pepper v1", hashlib.sha256).digest()


def hash_key(raw: str, pepper: bytes) -> str:
    """HMAC-SHA256 (RFC 2104) of the key with the pepper, hex: what the database stores."""
    return key_digest(raw, pepper).hex()


def key_digest(raw: str, pepper: bytes) -> bytes:
    """HMAC-SHA256 of the key with the pepper, as bytes (the hot path compares these).

    The pepper's inner and outer hash states are computed once and copied per key, which halves the cost of
    `hmac.new`; tests check the result equals `hmac.new(pepper, raw, sha256)`.
    """
    inner_start, outer_start = _hmac_states(pepper)
    inner = inner_start.copy()
    inner.update(raw.encode("ascii"))
    outer = outer_start.copy()
    outer.update(inner.digest())
    return outer.digest()


@cache
def _hmac_states(pepper: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    block = (hashlib.sha256(pepper).digest() if len(pepper) > _SHA256_BLOCK else pepper).ljust(_SHA256_BLOCK, b"\0")
    return (
        hashlib.sha256(bytes(byte ^ 0x36 for byte in block)),
        hashlib.sha256(bytes(byte ^ 0x5C for byte in block)),
    )


def hashes_match(presented_hash: bytes, stored_hash: bytes) -> bool:
    return hmac.compare_digest(presented_hash, stored_hash)


def hint_for(raw: str) -> str:
    """What the API shows instead of the key: prefix, key_id and last 4 characters, e.g. `ks_4fZq8Lr2Xy0B_…Z01a`."""
    head, _, _ = raw.rpartition("_")
    return f"{head}_…{raw[-4:]}"
