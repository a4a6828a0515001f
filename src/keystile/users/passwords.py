"""Password hashing with Argon2id (pwdlib). Hashing is CPU-bound, so it runs in a worker thread, off the event loop."""

from __future__ import annotations

from anyio import to_thread
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

# Checked against when an email is unknown, so that a miss costs as much as a hit (no timing oracle).
_DUMMY_PASSWORD = "keystile-dummy-password-for-timing"  # noqa: S105  (not a credential: nothing accepts it)


class Passwords:
    """Hashes and checks passwords. `hasher` defaults to pwdlib's recommended Argon2id parameters; tests pass a
    cheaper Argon2id so that hundreds of registrations do not cost minutes."""

    def __init__(self, hasher: PasswordHash | None = None) -> None:
        self._hasher = hasher if hasher is not None else PasswordHash((Argon2Hasher(),))
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await to_thread.run_sync(self._hasher.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Check `password` against `password_hash`; with None, spend the same effort and return False."""
        if password_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(_DUMMY_PASSWORD)
            await to_thread.run_sync(self._hasher.verify, password, self._dummy_hash)
            return False
        return await to_thread.run_sync(self._hasher.verify, password, password_hash)
