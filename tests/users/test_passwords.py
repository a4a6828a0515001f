from __future__ import annotations

from typing import Any

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from keystile.users.passwords import Passwords
from tests.helpers import PASSWORD, KeystileClient


class RecordingHasher(PasswordHash):
    """Real Argon2id at its lowest cost, recording every verification it performs."""

    def __init__(self) -> None:
        super().__init__((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
        self.verified: list[tuple[str, str]] = []

    def verify(self, password: str | bytes, hash: str | bytes, *args: Any, **kwargs: Any) -> bool:
        self.verified.append((str(password), str(hash)))
        return super().verify(password, hash, *args, **kwargs)


@pytest.fixture
def hasher() -> RecordingHasher:
    return RecordingHasher()


@pytest.fixture
def passwords(hasher: RecordingHasher) -> Passwords:
    return Passwords(hasher)


async def test_hash_password_produces_an_argon2id_hash_that_does_not_contain_the_password(passwords: Passwords) -> None:
    hashed = await passwords.hash(PASSWORD)

    assert hashed.startswith("$argon2id$")
    assert PASSWORD not in hashed


async def test_hashing_the_same_password_twice_gives_different_salted_hashes(passwords: Passwords) -> None:
    assert await passwords.hash(PASSWORD) != await passwords.hash(PASSWORD)


async def test_verify_password_accepts_the_right_password_and_rejects_a_wrong_one(passwords: Passwords) -> None:
    hashed = await passwords.hash(PASSWORD)

    assert await passwords.verify(PASSWORD, hashed) is True
    assert await passwords.verify(PASSWORD + "!", hashed) is False


async def test_verify_password_without_a_hash_still_runs_an_argon2_check_and_returns_false(
    passwords: Passwords,
    hasher: RecordingHasher,
) -> None:
    assert await passwords.verify(PASSWORD, None) is False

    [(checked_password, checked_hash)] = hasher.verified
    assert checked_password == PASSWORD
    assert checked_hash.startswith("$argon2id$")


async def test_verify_password_without_a_hash_is_false_even_for_the_dummy_password(
    passwords: Passwords,
    hasher: RecordingHasher,
) -> None:
    # The dummy hash's own password must not log anyone in to an account that does not exist.
    assert await passwords.verify("keystile-dummy-password-for-timing", None) is False
    assert len(hasher.verified) == 1


async def test_unknown_and_known_accounts_cost_one_argon2_check_each(
    passwords: Passwords, hasher: RecordingHasher
) -> None:
    hashed = await passwords.hash(PASSWORD)

    await passwords.verify("wrong password", hashed)
    await passwords.verify("wrong password", None)

    assert len(hasher.verified) == 2
    assert all(checked_hash.startswith("$argon2id$") for _, checked_hash in hasher.verified)


async def test_a_login_for_an_unknown_email_still_runs_an_argon2_check(
    client: KeystileClient, passwords: Passwords, hasher: RecordingHasher
) -> None:
    client.keystile.passwords = passwords
    response = await client.post("/auth/token", data={"username": "nobody@example.com", "password": PASSWORD})

    assert response.status_code == 401
    [(checked_password, checked_hash)] = hasher.verified
    assert checked_password == PASSWORD
    assert checked_hash.startswith("$argon2id$")
