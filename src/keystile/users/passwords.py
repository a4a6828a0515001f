"""Password hashing with Argon2id (pwdlib). Hashing is CPU-bound, so it runs in a worker thread, off the event loop."""

from __future__ import annotations

from functools import cache

from anyio import to_thread
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher


@cache
def _hasher() -> PasswordHash:
    return PasswordHash((Argon2Hasher(),))


@cache
def _dummy_hash() -> str:
    # Checked against when the email is unknown, so that a miss costs as much as a hit (no timing oracle).
    return _hasher().hash("keystile-dummy-password-for-timing")


async def hash_password(password: str) -> str:
    return await to_thread.run_sync(_hasher().hash, password)


async def verify_password(password: str, password_hash: str | None) -> bool:
    """Check `password` against `password_hash`; with None, spend the same effort and return False."""
    if password_hash is None:
        await to_thread.run_sync(_hasher().verify, password, _dummy_hash())
        return False
    return await to_thread.run_sync(_hasher().verify, password, password_hash)
