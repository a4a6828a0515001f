from __future__ import annotations

from typing import Any

import pytest

from keystile.users import passwords
from tests.helpers import KeystileClient

PASSWORD = "correct horse battery staple"


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record every Argon2 verification the module performs, still running the real check."""
    hasher = passwords._hasher()
    real_verify = hasher.verify
    calls: list[tuple[str, str]] = []

    def spy(password: str, hash: str, *args: Any, **kwargs: Any) -> bool:
        calls.append((password, hash))
        return bool(real_verify(password, hash, *args, **kwargs))

    monkeypatch.setattr(hasher, "verify", spy)
    return calls


async def test_hash_password_produces_an_argon2id_hash_that_does_not_contain_the_password() -> None:
    hashed = await passwords.hash_password(PASSWORD)

    assert hashed.startswith("$argon2id$")
    assert PASSWORD not in hashed


async def test_hashing_the_same_password_twice_gives_different_salted_hashes() -> None:
    assert await passwords.hash_password(PASSWORD) != await passwords.hash_password(PASSWORD)


async def test_verify_password_accepts_the_right_password_and_rejects_a_wrong_one() -> None:
    hashed = await passwords.hash_password(PASSWORD)

    assert await passwords.verify_password(PASSWORD, hashed) is True
    assert await passwords.verify_password(PASSWORD + "!", hashed) is False


async def test_verify_password_without_a_hash_still_runs_an_argon2_check_and_returns_false(
    verify_calls: list[tuple[str, str]],
) -> None:
    assert await passwords.verify_password(PASSWORD, None) is False

    [(checked_password, checked_hash)] = verify_calls
    assert checked_password == PASSWORD
    assert checked_hash.startswith("$argon2id$")


async def test_verify_password_without_a_hash_is_false_even_for_the_dummy_password(
    verify_calls: list[tuple[str, str]],
) -> None:
    # The dummy hash's own password must not log anyone in to an account that does not exist.
    assert await passwords.verify_password("keystile-dummy-password-for-timing", None) is False
    assert len(verify_calls) == 1


async def test_unknown_and_known_accounts_cost_one_argon2_check_each(verify_calls: list[tuple[str, str]]) -> None:
    hashed = await passwords.hash_password(PASSWORD)

    await passwords.verify_password("wrong password", hashed)
    await passwords.verify_password("wrong password", None)

    assert len(verify_calls) == 2
    assert all(checked_hash.startswith("$argon2id$") for _, checked_hash in verify_calls)


async def test_a_login_for_an_unknown_email_still_runs_an_argon2_check(
    client: KeystileClient, verify_calls: list[tuple[str, str]]
) -> None:
    response = await client.post("/auth/token", data={"username": "nobody@example.com", "password": PASSWORD})

    assert response.status_code == 401
    [(checked_password, checked_hash)] = verify_calls
    assert checked_password == PASSWORD
    assert checked_hash.startswith("$argon2id$")
