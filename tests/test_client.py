"""`keystile.client` against a real `keystile serve`: key management, every verify code the server can be brought to
answer, each exception from a real answer, retries, timeouts, the optional cache, and no secret in any repr.

One server per module (SQLite); each test registers its own user, so tests share nothing but the process. Transport
failures use a port where nothing listens, or a socket that accepts connections and never answers.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from keystile.client import (
    AsyncKeystileClient,
    AuthenticationError,
    ConflictError,
    Key,
    KeystileClient,
    KeystileConnectionError,
    KeystileError,
    KeystileTimeoutError,
    KeyUsage,
    NotFoundError,
    PermissionDeniedError,
    RateLimit,
    RateLimitedError,
    RateLimitState,
    ValidationError,
    VerifyCache,
    VerifyCode,
    VerifyResult,
    calls,
)
from keystile.keys.records import Outcome
from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD
from tests.process import KeystileServer, free_port

pytestmark = pytest.mark.process

VERIFY_SCOPE = "keys:verify"
HOUR = 3600  # a rate limit window no test run crosses twice


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeystileServer]:
    cwd = tmp_path_factory.mktemp("client")
    env = {
        "KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{cwd / 'keystile.db'}",
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
    }
    with KeystileServer(env, cwd) as running:
        yield running


def new_token(base_url: str) -> str:
    """Register a user of its own for the calling test and log in; the bearer token."""
    email = f"client-{uuid.uuid4().hex[:12]}@example.com"
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        assert http.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        answer = http.post("/auth/token", data={"username": email, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])


@pytest.fixture
def token(server: KeystileServer) -> str:
    return new_token(server.url)


@pytest.fixture
def keys(server: KeystileServer, token: str) -> Iterator[KeystileClient]:
    """A client managing the test user's keys with its token."""
    with KeystileClient(server.url, token=token) as client:
        yield client


@pytest.fixture
def verifier(server: KeystileServer, keys: KeystileClient) -> Iterator[KeystileClient]:
    """A client that verifies with a `keys:verify` key of the same user (so it answers for that user's keys)."""
    raw = keys.create_key("gateway", scopes=[VERIFY_SCOPE]).key
    assert raw is not None
    with KeystileClient(server.url, api_key=raw) as client:
        yield client


def raw_key(key: Key) -> str:
    assert key.key is not None, "only create_key and rotate_key answers carry the raw key"
    return key.key


# Key management


def test_a_key_is_created_listed_read_updated_rotated_and_revoked(keys: KeystileClient) -> None:
    created = keys.create_key(
        "ci",
        scopes=["data:read", "data:write"],
        rate_limit=RateLimit(limit=100, window_seconds=60),
        quota=1000,
        ip_allowlist=["10.0.0.0/8"],
        metadata={"team": "infra"},
        expires_in=86_400,
    )

    assert created.name == "ci"
    assert created.scopes == ("data:read", "data:write")
    assert created.rate_limit == RateLimit(limit=100, window_seconds=60)
    assert created.quota_remaining == 1000
    assert created.ip_allowlist == ("10.0.0.0/8",)
    assert created.metadata == {"team": "infra"}
    assert created.is_active
    assert created.expires_at is not None
    assert created.expires_at > datetime.now(UTC)
    assert raw_key(created).startswith("ks_")
    assert created.hint in {key.hint for key in keys.list_keys()}

    read = keys.get_key(created.id)
    assert read.key is None  # shown once
    assert (read.id, read.name, read.scopes, read.owner_id) == (created.id, "ci", created.scopes, created.owner_id)

    updated = keys.update_key(created.id, name="ci-renamed", quota=None, rate_limit=None, expires_at=None)
    assert (updated.name, updated.quota_remaining, updated.rate_limit, updated.expires_at) == (
        "ci-renamed",
        None,
        None,
        None,
    )
    assert updated.scopes == created.scopes  # fields not given are kept

    successor = keys.rotate_key(created.id, grace_seconds=60)
    assert successor.id != created.id
    assert successor.rotated_from == created.id
    assert raw_key(successor) != raw_key(created)

    revoked = keys.revoke_key(successor.id)
    assert not revoked.is_active
    assert revoked.revoked_at is not None
    assert keys.revoke_key(successor.id).revoked_at == revoked.revoked_at  # idempotent


def test_list_keys_pages(keys: KeystileClient) -> None:
    made = [keys.create_key(f"k{number}").id for number in range(3)]

    first, rest = keys.list_keys(limit=2), keys.list_keys(limit=2, offset=2)

    assert [key.id for key in first + rest] == made[::-1]  # newest first


# Verify: every code the server can be brought to answer


def test_verify_valid_reports_the_key(keys: KeystileClient, verifier: KeystileClient) -> None:
    key = keys.create_key(
        "svc", scopes=["data:read"], rate_limit=RateLimit(limit=10, window_seconds=HOUR), quota=5, metadata={"a": 1}
    )

    result = verifier.verify(raw_key(key), scopes=["data:read"], cost=2, ip="192.0.2.7")

    assert result.valid
    assert result.code is VerifyCode.VALID
    assert (result.api_key_id, result.owner_id, result.name) == (key.id, key.owner_id, "svc")
    assert result.scopes == ("data:read",)
    assert result.metadata == {"a": 1}
    assert result.ratelimit is not None
    assert (result.ratelimit.limit, result.ratelimit.remaining) == (10, 8)
    assert 0 < result.ratelimit.reset_seconds <= HOUR
    assert result.quota_remaining == 3


def test_verify_answers_each_refusal_with_its_code(keys: KeystileClient, verifier: KeystileClient) -> None:
    plain = raw_key(keys.create_key("plain"))
    revoked = keys.create_key("revoked")
    keys.revoke_key(revoked.id)
    rotated = keys.create_key("rotated")
    keys.rotate_key(rotated.id, grace_seconds=0)  # the old key expires now
    allowlisted = raw_key(keys.create_key("allowlisted", ip_allowlist=["10.0.0.0/8"]))
    limited = raw_key(keys.create_key("limited", rate_limit=RateLimit(limit=1, window_seconds=HOUR)))
    metered = raw_key(keys.create_key("metered", quota=1))
    assert verifier.verify(limited).valid
    assert verifier.verify(metered).valid

    answers = {
        "garbage": verifier.verify("not-a-key"),
        "revoked": verifier.verify(raw_key(revoked)),
        "expired": verifier.verify(raw_key(rotated)),
        "scopes": verifier.verify(plain, scopes=["admin:all"]),
        "ip": verifier.verify(allowlisted, ip="192.0.2.1"),
        "rate": verifier.verify(limited),
        "quota": verifier.verify(metered),
    }

    assert {name: answer.code for name, answer in answers.items()} == {
        "garbage": VerifyCode.NOT_FOUND,
        "revoked": VerifyCode.REVOKED,
        "expired": VerifyCode.EXPIRED,
        "scopes": VerifyCode.INSUFFICIENT_SCOPES,
        "ip": VerifyCode.IP_NOT_ALLOWED,
        "rate": VerifyCode.RATE_LIMITED,
        "quota": VerifyCode.QUOTA_EXCEEDED,
    }
    assert not any(answer.valid for answer in answers.values())
    assert answers["garbage"] == VerifyResult(valid=False, code=VerifyCode.NOT_FOUND)
    assert answers["rate"].ratelimit is not None
    assert answers["rate"].ratelimit.remaining == 0
    assert verifier.verify(allowlisted, ip="10.1.2.3").valid


def test_a_verifier_key_answers_not_found_for_another_owners_key(
    server: KeystileServer, verifier: KeystileClient
) -> None:
    with KeystileClient(server.url, token=new_token(server.url)) as stranger:
        foreign = raw_key(stranger.create_key("theirs"))

    assert verifier.verify(foreign).code is VerifyCode.NOT_FOUND


def test_verify_codes_match_the_servers_outcomes() -> None:
    assert [code.value for code in VerifyCode] == [outcome.value for outcome in Outcome]


def test_an_unknown_code_and_unknown_fields_from_a_newer_server_are_kept_not_fatal() -> None:
    answer = {"valid": False, "code": "SUSPENDED", "suspended_at": "2030-01-01T00:00:00Z", "api_key_id": 7}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    with KeystileClient("http://keystile.test", token="t", transport=transport) as client:
        result = client.verify("ks_anything")

    assert result.code == "SUSPENDED"
    assert not isinstance(result.code, VerifyCode)
    assert (result.valid, result.api_key_id) == (False, 7)


# Exceptions, each from a real answer


def test_a_bad_token_is_an_authentication_error(server: KeystileServer) -> None:
    with KeystileClient(server.url, token="not-a-jwt") as client, pytest.raises(AuthenticationError) as raised:
        client.list_keys()

    assert raised.value.status_code == 401
    assert raised.value.detail == "Not authenticated"


def test_verify_with_a_non_admin_token_is_permission_denied(server: KeystileServer, token: str) -> None:
    with KeystileClient(server.url, token=token) as client, pytest.raises(PermissionDeniedError) as raised:
        client.verify("ks_whatever")

    assert raised.value.status_code == 403
    assert "Admin" in str(raised.value)


def test_another_users_key_is_not_found(server: KeystileServer, keys: KeystileClient) -> None:
    with KeystileClient(server.url, token=new_token(server.url)) as stranger:
        theirs = stranger.create_key("theirs")

    for action in (keys.get_key, keys.revoke_key, keys.rotate_key):
        with pytest.raises(NotFoundError) as raised:
            action(theirs.id)
        assert raised.value.detail == "API key not found"


def test_rotating_a_revoked_key_is_a_conflict(keys: KeystileClient) -> None:
    key = keys.create_key("gone")
    keys.revoke_key(key.id)

    with pytest.raises(ConflictError) as raised:
        keys.rotate_key(key.id)

    assert raised.value.status_code == 409


def test_bad_input_is_a_validation_error_with_the_servers_field_errors(keys: KeystileClient) -> None:
    with pytest.raises(ValidationError) as raised:
        keys.create_key("ok", scopes=["Not A Scope"])

    assert raised.value.status_code == 422
    assert isinstance(raised.value.detail, list)
    assert raised.value.detail[0]["loc"][:2] == ["body", "scopes"]
    assert "body.scopes" in str(raised.value)


def test_a_rate_limited_verifier_key_is_rate_limited_with_retry_after(
    server: KeystileServer, keys: KeystileClient
) -> None:
    caller = keys.create_key("slow-gateway", scopes=[VERIFY_SCOPE], rate_limit=RateLimit(limit=1, window_seconds=HOUR))
    with KeystileClient(server.url, api_key=raw_key(caller)) as client:
        client.verify("ks_first")
        with pytest.raises(RateLimitedError) as raised:
            client.verify("ks_second")

    assert raised.value.status_code == 429
    assert raised.value.retry_after is not None
    assert 1 <= raised.value.retry_after <= HOUR
    assert isinstance(raised.value, KeystileError)


def test_key_usage_reads_the_route_or_is_not_found_on_a_server_without_it(
    server: KeystileServer, keys: KeystileClient
) -> None:
    key = keys.create_key("counted")
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    server_has_usage = any(path.startswith("/keys/") and path.endswith("/usage") for path in paths)

    if server_has_usage:
        assert isinstance(keys.key_usage(key.id, interval="day"), KeyUsage)
    else:
        with pytest.raises(NotFoundError):
            keys.key_usage(key.id, interval="day", since=datetime.now(UTC) - timedelta(days=1))


def test_key_usage_reads_the_contracts_shape() -> None:
    answer = {
        "interval": "hour",
        "buckets": [
            {"start": "2030-01-01T00:00:00Z", "valid": 5, "rate_limited": 1, "quota_exceeded": 0, "rejected": 2}
        ],
    }
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    since = datetime(2030, 1, 1, tzinfo=UTC)
    with KeystileClient("http://keystile.test", token="t", transport=httpx.MockTransport(handler)) as client:
        usage = client.key_usage(3, interval="hour", since=since)

    assert seen[0].url.path == "/keys/3/usage"
    assert dict(seen[0].url.params) == {"interval": "hour", "since": since.isoformat()}
    assert usage.interval == "hour"
    assert [(bucket.start, bucket.valid, bucket.rejected) for bucket in usage.buckets] == [(since, 5, 2)]


# Retries and timeouts


class CountingTransport(httpx.HTTPTransport):
    """A real transport that counts the requests it was asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        return super().handle_request(request)


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        return await super().handle_async_request(request)


Action = Callable[[KeystileClient], Any]
ACTIONS_BY_RETRY: list[Any] = [
    pytest.param(lambda client: client.get_key(1), 3, id="get_key-retried"),
    pytest.param(lambda client: client.list_keys(), 3, id="list_keys-retried"),
    pytest.param(lambda client: client.key_usage(1), 3, id="key_usage-retried"),
    pytest.param(lambda client: client.revoke_key(1), 3, id="revoke_key-retried"),
    pytest.param(lambda client: client.verify("ks_key"), 1, id="verify-never-retried"),
    pytest.param(lambda client: client.create_key("k"), 1, id="create_key-never-retried"),
    pytest.param(lambda client: client.update_key(1, name="k"), 1, id="update_key-never-retried"),
    pytest.param(lambda client: client.rotate_key(1), 1, id="rotate_key-never-retried"),
]


@pytest.mark.parametrize(("action", "attempts"), ACTIONS_BY_RETRY)
def test_a_refused_connection_is_retried_with_backoff_only_for_idempotent_calls(action: Action, attempts: int) -> None:
    transport, slept = CountingTransport(), list[float]()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = KeystileClient(url, token="t", retries=2, backoff=0.1, transport=transport, sleep=slept.append)
    with client, pytest.raises(KeystileConnectionError) as raised:
        action(client)

    assert transport.attempts == attempts
    assert slept == [0.1, 0.2][: attempts - 1]
    assert raised.value.status_code is None
    assert url in str(raised.value)


async def test_the_async_client_retries_reads_and_never_verify() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    for call, attempts in (("get_key", 4), ("verify", 1)):
        transport = AsyncCountingTransport()
        slept.clear()
        async with AsyncKeystileClient(url, token="t", retries=3, transport=transport, sleep=sleep) as client:
            with pytest.raises(KeystileConnectionError):
                await (client.get_key(1) if call == "get_key" else client.verify("ks_key"))
        assert transport.attempts == attempts, call
        assert slept == [0.1, 0.2, 0.4][: attempts - 1], call


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections (the kernel's backlog does) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_no_answer_in_time_is_a_timeout_and_is_not_retried(silent_server: str) -> None:
    transport, slept = CountingTransport(), list[float]()
    client = KeystileClient(silent_server, token="t", timeout=0.2, transport=transport, sleep=slept.append)
    with client, pytest.raises(KeystileTimeoutError):
        client.get_key(1)  # idempotent, yet a read timeout may come after the server acted

    assert (transport.attempts, slept) == (1, [])


async def test_the_async_client_times_out_too(silent_server: str) -> None:
    async with AsyncKeystileClient(silent_server, token="t", timeout=0.2) as client:
        with pytest.raises(KeystileTimeoutError):
            await client.verify("ks_key")


# The optional cache


def test_the_cache_is_off_by_default_and_when_on_serves_valid_answers_without_counting_them(
    server: KeystileServer, keys: KeystileClient, verifier: KeystileClient
) -> None:
    metered = raw_key(keys.create_key("metered", quota=1))
    caller = raw_key(keys.create_key("caching-gateway", scopes=[VERIFY_SCOPE]))

    with KeystileClient(server.url, api_key=caller, cache_ttl=60) as caching:
        first, second = caching.verify(metered), caching.verify(metered)
        assert first.valid
        assert second is first
        assert caching.verify(metered, cost=2).code is VerifyCode.QUOTA_EXCEEDED  # another (key, cost): asked

    assert verifier.verify(metered).code is VerifyCode.QUOTA_EXCEEDED  # no cache: the server's answer
    assert verifier.verify(metered).code is VerifyCode.QUOTA_EXCEEDED  # refusals are never cached either way


def test_cached_answers_last_the_ttl_and_never_outlive_the_keys_expiry() -> None:
    now = [100.0]
    cache = VerifyCache(10.0, monotonic=lambda: now[0])
    call = calls.verify("ks_secret_key", ["a"], 1, None)
    soon = VerifyResult(valid=True, code=VerifyCode.VALID, expires_at=datetime.now(UTC) + timedelta(seconds=3))
    later = VerifyResult(valid=True, code=VerifyCode.VALID)

    cache.keep(call, later)
    now[0] += 9.9
    assert cache.get(call) is later
    now[0] += 0.1
    assert cache.get(call) is None

    cache.keep(call, soon)
    now[0] += 3.1
    assert cache.get(call) is None
    assert "ks_secret_key" not in repr(cache._entries)  # keyed by a digest, not the key


# Secrets


def test_no_secret_appears_in_reprs_or_exception_messages(server: KeystileServer, keys: KeystileClient) -> None:
    token = new_token(server.url)
    created = keys.create_key("secret-bearing", scopes=[VERIFY_SCOPE])
    secrets = [token, raw_key(created)]
    with KeystileClient(server.url, token=token, api_key=raw_key(created)) as client:
        shown = [repr(client), repr(created), str(created), repr(client.verify(raw_key(created)))]
    with KeystileClient(server.url, token=token + "x") as wrong, pytest.raises(AuthenticationError) as auth:
        wrong.list_keys()
    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = KeystileClient(dead, token=token, api_key=raw_key(created))
    with unreachable, pytest.raises(KeystileConnectionError) as refused:
        unreachable.verify(raw_key(created))
    errors: list[BaseException] = [auth.value, refused.value]
    shown += [text for error in errors for text in (str(error), repr(error), str(error.__cause__))]

    assert "'***'" in shown[0]
    for text in shown:
        for secret in secrets:
            assert secret not in text, text


# The async client


async def test_the_async_client_manages_and_verifies_keys(server: KeystileServer, token: str) -> None:
    async with AsyncKeystileClient(server.url, token=token) as keys:
        caller = await keys.create_key("async-gateway", scopes=[VERIFY_SCOPE])
        key = await keys.create_key("async", scopes=["data:read"], quota=10)
        assert key.id in {listed.id for listed in await keys.list_keys()}
        assert (await keys.get_key(key.id)).name == "async"
        assert (await keys.update_key(key.id, name="async-2")).name == "async-2"

        async with AsyncKeystileClient(server.url, api_key=raw_key(caller)) as verifier:
            valid = await verifier.verify(raw_key(key), scopes=["data:read"])
            assert (valid.code, valid.quota_remaining, valid.ratelimit) == (VerifyCode.VALID, 9, None)
            successor = await keys.rotate_key(key.id, grace_seconds=0)
            assert (await verifier.verify(raw_key(key))).code is VerifyCode.EXPIRED
            await keys.revoke_key(successor.id)
            assert (await verifier.verify(raw_key(successor))).code is VerifyCode.REVOKED

        with pytest.raises(ConflictError):
            await keys.rotate_key(successor.id)
        with pytest.raises(NotFoundError):
            await keys.get_key(successor.id + 1000)


@pytest.fixture
async def async_verifier(server: KeystileServer, keys: KeystileClient) -> AsyncIterator[AsyncKeystileClient]:
    caller = keys.create_key("limited-async", scopes=[VERIFY_SCOPE], rate_limit=RateLimit(limit=1, window_seconds=HOUR))
    async with AsyncKeystileClient(server.url, api_key=raw_key(caller)) as client:
        yield client


async def test_the_async_client_raises_rate_limited_with_retry_after(async_verifier: AsyncKeystileClient) -> None:
    await async_verifier.verify("ks_first")

    with pytest.raises(RateLimitedError) as raised:
        await async_verifier.verify("ks_second")

    assert raised.value.retry_after is not None
    assert raised.value.retry_after >= 1


# PostgreSQL


@pytest.mark.postgres
def test_the_client_against_a_server_on_postgresql(tmp_path: Path) -> None:
    url = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_client")
    env = {"KEYSTILE_DATABASE_URL": url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}
    with KeystileServer(env, cwd=tmp_path) as postgres_server:
        keys = KeystileClient(postgres_server.url, token=new_token(postgres_server.url))
        with keys:
            caller = raw_key(keys.create_key("pg-gateway", scopes=[VERIFY_SCOPE]))
            key = keys.create_key("pg", rate_limit=RateLimit(limit=5, window_seconds=HOUR), quota=3)
            with KeystileClient(postgres_server.url, api_key=caller) as verifier:
                valid = verifier.verify(raw_key(key))
                keys.revoke_key(key.id)
                revoked = verifier.verify(raw_key(key))

    assert (valid.code, valid.quota_remaining, valid.ratelimit) == (
        VerifyCode.VALID,
        2,
        RateLimitState(limit=5, remaining=4, reset_seconds=valid.ratelimit.reset_seconds if valid.ratelimit else 0),
    )
    assert revoked.code is VerifyCode.REVOKED
