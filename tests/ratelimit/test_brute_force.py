"""Brute-force protection: failed logins per email and per client address, failed API keys per address."""

from __future__ import annotations

import httpx

from keystile.clock import FakeClock
from tests.conftest import MakeClient
from tests.helpers import EXPORT, PASSWORD, KeystileClient, align, create_key, register, user_headers

LOGIN_WINDOW = 900
KEY_FAILURE_WINDOW = 60


async def attempt(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, ip: str | None = None
) -> httpx.Response:
    headers = {"X-Forwarded-For": ip} if ip else {}
    return await client.post("/auth/token", data={"username": email, "password": password}, headers=headers)


async def metric(client: httpx.AsyncClient, line_prefix: str) -> str:
    text = (await client.get("/metrics")).text
    return next(line for line in text.splitlines() if line.startswith(line_prefix))


async def test_ten_failed_logins_for_one_email_lock_it_even_against_the_right_password(
    client: KeystileClient, clock: FakeClock
) -> None:
    await register(client, "alice@example.com")
    align(clock, LOGIN_WINDOW)
    clock.advance(100)

    failures = [await attempt(client, "alice@example.com", "wrong password!") for _ in range(10)]
    locked = await attempt(client, "alice@example.com")

    assert {r.status_code for r in failures} == {401}
    assert locked.status_code == 429
    assert locked.json() == {"detail": "Too many failed login attempts"}
    assert locked.headers["Retry-After"] == str(LOGIN_WINDOW - 100)
    assert await metric(client, 'keystile_rate_limited_requests_total{reason="login_failures"}') == (
        'keystile_rate_limited_requests_total{reason="login_failures"} 1.0'
    )


async def test_email_lock_is_case_insensitive(client: KeystileClient) -> None:
    await register(client, "alice@example.com")
    for _ in range(10):
        assert (await attempt(client, "Alice@Example.COM", "wrong password!")).status_code == 401

    assert (await attempt(client, "alice@example.com")).status_code == 429


async def test_a_locked_email_does_not_affect_other_emails(client: KeystileClient) -> None:
    await register(client, "alice@example.com")
    await register(client, "bob@example.com")
    for _ in range(10):
        await attempt(client, "alice@example.com", "wrong password!")

    alice = await attempt(client, "alice@example.com")
    bob = await attempt(client, "bob@example.com")

    assert alice.status_code == 429
    assert bob.status_code == 200
    assert bob.json()["token_type"] == "bearer"


async def test_login_works_again_once_the_failure_window_has_passed(client: KeystileClient, clock: FakeClock) -> None:
    await register(client, "alice@example.com")
    align(clock, LOGIN_WINDOW)
    for _ in range(10):
        await attempt(client, "alice@example.com", "wrong password!")
    retry_after = int((await attempt(client, "alice@example.com")).headers["Retry-After"])

    clock.advance(retry_after - 1)
    early = await attempt(client, "alice@example.com")
    clock.advance(1)
    on_time = await attempt(client, "alice@example.com")

    assert retry_after == LOGIN_WINDOW
    assert early.status_code == 429
    assert on_time.status_code == 200


async def test_thirty_failures_from_one_address_block_that_address_only(make_client: MakeClient) -> None:
    client = await make_client(trusted_proxies=["127.0.0.0/8"])
    await register(client, "alice@example.com")
    attacker, neighbour = "203.0.113.7", "198.51.100.9"

    failures = [await attempt(client, f"victim{i}@example.com", "wrong password!", ip=attacker) for i in range(30)]
    blocked = await attempt(client, "alice@example.com", ip=attacker)
    elsewhere = await attempt(client, "alice@example.com", ip=neighbour)

    assert {r.status_code for r in failures} == {401}
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) >= 1
    assert elsewhere.status_code == 200


async def test_login_failure_limits_are_configurable(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(
        trusted_proxies=["127.0.0.0/8"],
        login_max_failures_per_email=2,
        login_max_failures_per_ip=3,
        login_failure_window_seconds=60,
    )
    await register(client, "alice@example.com")
    await register(client, "bob@example.com")
    align(clock, 60)

    email_failures = [await attempt(client, "alice@example.com", "wrong password!", ip="203.0.113.1") for _ in range(2)]
    email_locked = await attempt(client, "alice@example.com", ip="203.0.113.2")
    ip_failures = [await attempt(client, f"x{i}@example.com", "wrong password!", ip="203.0.113.3") for i in range(3)]
    ip_locked = await attempt(client, "bob@example.com", ip="203.0.113.3")
    bob_elsewhere = await attempt(client, "bob@example.com", ip="203.0.113.4")

    assert {r.status_code for r in email_failures + ip_failures} == {401}
    assert (email_locked.status_code, email_locked.headers["Retry-After"]) == (429, "60")
    assert (ip_locked.status_code, ip_locked.headers["Retry-After"]) == (429, "60")
    assert bob_elsewhere.status_code == 200


async def test_failed_logins_are_audited_with_the_account(client: KeystileClient) -> None:
    headers = await user_headers(client, "alice@example.com")
    await attempt(client, "alice@example.com", "wrong password!")

    events = (await client.get("/audit", headers=headers)).json()

    assert [e["action"] for e in events if e["action"] == "user.login_failed"] == ["user.login_failed"]


async def test_thirty_invalid_keys_from_one_address_get_429_but_a_valid_key_still_works(
    client: KeystileClient, clock: FakeClock
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers)
    align(clock, KEY_FAILURE_WINDOW)
    clock.advance(20)

    failures = [await client.get(EXPORT, headers={"X-API-Key": f"ks_garbage_{i}"}) for i in range(30)]
    refused = await client.get(EXPORT, headers={"X-API-Key": "ks_garbage_more"})
    valid = await client.get(EXPORT, headers={"X-API-Key": created["key"]})
    refused_again = await client.get(EXPORT, headers={"X-API-Key": "ks_garbage_again"})

    assert {r.status_code for r in failures} == {401}
    assert {r.json()["detail"] for r in failures} == {"Invalid or expired API key"}
    assert refused.status_code == 429
    assert refused.json() == {"detail": "Too many failed API key attempts"}
    assert refused.headers["Retry-After"] == str(KEY_FAILURE_WINDOW - 20)
    assert valid.status_code == 200
    assert valid.json()["data"] == []
    assert refused_again.status_code == 429
    assert await metric(client, 'keystile_rate_limited_requests_total{reason="key_failures"}') == (
        'keystile_rate_limited_requests_total{reason="key_failures"} 2.0'
    )


async def test_invalid_key_attempts_are_accepted_again_after_the_window(
    client: KeystileClient, clock: FakeClock
) -> None:
    align(clock, KEY_FAILURE_WINDOW)
    for i in range(30):
        await client.get(EXPORT, headers={"X-API-Key": f"ks_garbage_{i}"})
    refused = await client.get(EXPORT, headers={"X-API-Key": "ks_garbage_more"})

    clock.advance(int(refused.headers["Retry-After"]))
    after = await client.get(EXPORT, headers={"X-API-Key": "ks_garbage_more"})

    assert refused.status_code == 429
    assert after.status_code == 401
    assert after.headers["WWW-Authenticate"] == "APIKey"


async def test_key_failure_limit_is_configurable_and_counted_per_address(make_client: MakeClient) -> None:
    client = await make_client(key_failure_limit="3/60", trusted_proxies=["127.0.0.0/8"])
    headers = await user_headers(client)
    created = await create_key(client, headers)

    def from_ip(ip: str, key: str) -> dict[str, str]:
        return {"X-Forwarded-For": ip, "X-API-Key": key}

    attacker = [await client.get(EXPORT, headers=from_ip("203.0.113.7", "ks_nope")) for _ in range(4)]
    neighbour = await client.get(EXPORT, headers=from_ip("198.51.100.9", "ks_nope"))
    holder = await client.get(EXPORT, headers=from_ip("203.0.113.7", created["key"]))

    assert [r.status_code for r in attacker] == [401, 401, 401, 429]
    assert neighbour.status_code == 401
    assert holder.status_code == 200
