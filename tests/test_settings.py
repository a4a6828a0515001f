from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from keystile.app import create_app
from keystile.clock import FakeClock
from keystile.instance import Keystile
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.settings import Settings
from tests.helpers import CHEAP_PASSWORDS, create_key, login, register

LONG_SECRET = "s" * 32


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No KEYSTILE_* setting from the caller's shell, and a scratch working directory for relative paths."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"KEYSTILE_{name.upper()}", raising=False)
    monkeypatch.chdir(tmp_path)


@asynccontextmanager
async def serving(settings: Settings, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """One run of the service: lifespan started and stopped, as a process start and stop would."""
    app = create_app(settings, clock=clock, passwords=CHEAP_PASSWORDS)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
    ):
        yield client


def test_importing_keystile_does_not_read_settings_even_when_the_environment_is_invalid(tmp_path: Path) -> None:
    environment = os.environ | {
        "KEYSTILE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        "KEYSTILE_SECRET_KEY": "short",
        "KEYSTILE_JWT_TTL_SECONDS": "not-a-number",
        "KEYSTILE_DEFAULT_RATE_LIMIT": "lots",
        "KEYSTILE_TRUSTED_PROXIES": "not-a-network",
        "KEYSTILE_LOG_LEVEL": "shouting",
    }
    code = "import keystile, keystile.app, keystile.fastapi, keystile.instance, keystile.cli"

    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, cwd=tmp_path, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_create_app_reads_the_environment_when_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSTILE_JWT_TTL_SECONDS", "not-a-number")

    with pytest.raises(ValidationError, match="jwt_ttl_seconds"):
        create_app()


def test_keystile_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "KEYSTILE_DATABASE_URL": "postgresql+asyncpg://app@db.internal:5432/keys",
        "KEYSTILE_REDIS_URL": "redis://cache.internal:6379/3",
        "KEYSTILE_SECRET_KEY": "k" * 40,
        "KEYSTILE_KEY_PREFIX": "ks_live",
        "KEYSTILE_ACCEPT_QUERY_KEY": "true",
        "KEYSTILE_DEFAULT_RATE_LIMIT": "100/60",
        "KEYSTILE_RATE_LIMIT_FAILURE": "closed",
        "KEYSTILE_ALLOW_REGISTRATION": "false",
        "KEYSTILE_JWT_TTL_SECONDS": "120",
        "KEYSTILE_TRUSTED_PROXIES": "10.0.0.0/8",
        "KEYSTILE_LOG_LEVEL": "debug",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert settings.database_url == "postgresql+asyncpg://app@db.internal:5432/keys"
    assert settings.redis_url == "redis://cache.internal:6379/3"
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == "k" * 40
    assert settings.key_prefix == "ks_live"
    assert settings.accept_query_key is True
    assert settings.default_rate_limit == RateLimitPolicy(limit=100, window_seconds=60)
    assert settings.rate_limit_failure == "closed"
    assert settings.allow_registration is False
    assert settings.jwt_ttl_seconds == 120
    assert settings.trusted_proxies == ["10.0.0.0/8"]
    assert settings.log_level == "debug"
    assert settings.resolved_secret_key() == "k" * 40


def test_defaults_match_the_contract() -> None:
    settings = Settings()

    assert settings.database_url == "sqlite+aiosqlite:///./keystile.db"
    assert settings.redis_url is None
    assert settings.secret_key is None
    assert settings.key_prefix == "ks"
    assert settings.accept_query_key is False
    assert settings.default_rate_limit is None
    assert settings.rate_limit_failure == "open"
    assert settings.allow_registration is True
    assert settings.jwt_ttl_seconds == 900
    assert settings.trusted_proxies == []
    assert settings.log_level == "info"


@pytest.mark.parametrize("name", ["KEYSTILE_SECRET_KEY", "KEYSTILE_REDIS_URL", "KEYSTILE_DEFAULT_RATE_LIMIT"])
def test_a_blank_optional_setting_counts_as_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "  ")

    settings = Settings()

    assert getattr(settings, name.removeprefix("KEYSTILE_").lower()) is None


def test_embedded_mode_generates_a_private_secret_file_beside_the_sqlite_file(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/data/keystile.db")

    secret = settings.resolved_secret_key()

    path = tmp_path / "data" / "keystile.secret"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret.encode()) >= 32
    assert sorted(child.name for child in path.parent.iterdir()) == ["keystile.secret"]


def test_embedded_mode_reuses_the_secret_file_on_later_calls_and_new_settings(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/keystile.db"
    first = Settings(database_url=url).resolved_secret_key()

    assert Settings(database_url=url).resolved_secret_key() == first
    assert Keystile(Settings(database_url=url)).signing_key == first


def test_embedded_databases_in_different_files_get_different_secrets(tmp_path: Path) -> None:
    one = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/one.db").resolved_secret_key()
    two = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/two.db").resolved_secret_key()

    assert one != two


def test_processes_starting_at_once_agree_on_one_embedded_secret(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/keystile.db")

    with ThreadPoolExecutor(max_workers=8) as pool:
        secrets = list(pool.map(lambda _: settings.resolved_secret_key(), range(32)))

    assert len(set(secrets)) == 1
    assert sorted(child.name for child in tmp_path.iterdir()) == ["keystile.secret"]


def test_a_configured_secret_key_writes_no_secret_file(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/keystile.db", secret_key=LONG_SECRET)

    assert settings.resolved_secret_key() == LONG_SECRET
    assert list(tmp_path.iterdir()) == []


async def test_keys_and_tokens_issued_before_a_restart_still_verify_after_it(
    tmp_path: Path, sqlite_template: Path, clock: FakeClock
) -> None:
    database = tmp_path / "keystile.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite+aiosqlite:///{database}"

    async with serving(Settings(database_url=url), clock) as before:
        await register(before)
        headers = await login(before)
        key = (await create_key(before, headers))["key"]
        assert (await before.get("/data/export", headers={"X-API-Key": key})).status_code == 200

    async with serving(Settings(database_url=url), clock) as after:
        used = await after.get("/data/export", headers={"X-API-Key": key})
        me = await after.get("/users/me", headers=headers)

    assert used.status_code == 200
    assert me.status_code == 200
    assert me.json()["email"] == "alice@example.com"
    assert (tmp_path / "keystile.secret").exists()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql+asyncpg://postgres@127.0.0.1:5432/keystile", id="postgres"),
        pytest.param("mysql+aiomysql://root@127.0.0.1/keystile", id="mysql"),
    ],
)
def test_a_server_database_without_a_secret_key_is_a_clear_error(url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=url)

    with pytest.raises(RuntimeError, match="KEYSTILE_SECRET_KEY is required"):
        settings.resolved_secret_key()
    with pytest.raises(RuntimeError, match="KEYSTILE_SECRET_KEY is required"):
        create_app(settings)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("x" * 31, id="31-ascii-bytes"),
        pytest.param("é" * 15, id="30-utf8-bytes-in-15-chars"),
        pytest.param("x", id="1-byte"),
    ],
)
def test_a_secret_key_under_32_bytes_is_rejected(secret: str) -> None:
    with pytest.raises(ValidationError, match="secret_key") as error:
        Settings(secret_key=secret)

    assert "at least 32 bytes" in str(error.value)


@pytest.mark.parametrize(
    "secret",
    [pytest.param("x" * 32, id="32-ascii-bytes"), pytest.param("é" * 16, id="32-utf8-bytes-in-16-chars")],
)
def test_a_secret_key_of_32_bytes_is_accepted(secret: str) -> None:
    assert Settings(secret_key=secret).resolved_secret_key() == secret


def test_a_rejected_secret_key_is_not_printed_in_the_error() -> None:
    with pytest.raises(ValidationError) as error:
        Settings(secret_key="my-short-but-real-secret")

    assert "my-short-but-real-secret" not in str(error.value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("fast", id="word"),
        pytest.param("100 per minute", id="words"),
        pytest.param("100", id="no-window"),
        pytest.param("100/", id="empty-window"),
        pytest.param("/60", id="empty-limit"),
        pytest.param("0/60", id="zero-limit"),
        pytest.param("100/0", id="zero-window"),
        pytest.param("-1/60", id="negative"),
        pytest.param("1.5/60", id="fraction"),
        pytest.param("100/60/2", id="three-parts"),
        pytest.param("10000000000/60", id="huge-limit"),
        pytest.param("100/31536001", id="window-over-a-year"),
    ],
)
def test_a_bad_default_rate_limit_is_rejected_with_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KEYSTILE_DEFAULT_RATE_LIMIT", value)

    with pytest.raises(ValidationError, match="default_rate_limit") as raised:
        Settings(database_url="sqlite+aiosqlite:///unused.db", secret_key=LONG_SECRET)

    assert [error["loc"] for error in raised.value.errors()] == [("default_rate_limit",)]
    assert "default_rate_limit" in str(raised.value)


@pytest.mark.parametrize(
    ("value", "policy"),
    [
        pytest.param("100/60", (100, 60), id="plain"),
        pytest.param(" 5/1 ", (5, 1), id="padded"),
        pytest.param("1000000000/31536000", (1_000_000_000, 31_536_000), id="largest"),
    ],
)
def test_a_good_default_rate_limit_is_parsed(
    monkeypatch: pytest.MonkeyPatch, value: str, policy: tuple[int, int]
) -> None:
    monkeypatch.setenv("KEYSTILE_DEFAULT_RATE_LIMIT", value)

    assert Settings().default_rate_limit == RateLimitPolicy.of(*policy)


def test_trusted_proxies_are_read_as_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSTILE_TRUSTED_PROXIES", " 10.0.0.0/8, 192.168.1.7 ,,2001:db8::/32,::1 ")

    settings = Settings(secret_key=LONG_SECRET)

    assert settings.trusted_proxies == ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]
    assert list(Keystile(settings).trusted_proxies) == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("::1/128"),
    ]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("10.0.0.0/33", id="prefix-too-long"),
        pytest.param("10.0.0.0/8,not-a-network", id="one-bad-entry"),
        pytest.param("300.1.1.1", id="octet-out-of-range"),
        pytest.param("example.com", id="hostname"),
        pytest.param("2001:db8::/129", id="ipv6-prefix-too-long"),
    ],
)
def test_an_invalid_trusted_proxy_is_rejected(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("KEYSTILE_TRUSTED_PROXIES", value)

    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("KEYSTILE_KEY_PREFIX", "Ks", id="prefix-upper-case"),
        pytest.param("KEYSTILE_KEY_PREFIX", "1ks", id="prefix-starts-with-digit"),
        pytest.param("KEYSTILE_KEY_PREFIX", "k" * 17, id="prefix-too-long"),
        pytest.param("KEYSTILE_RATE_LIMIT_FAILURE", "sometimes", id="failure-mode"),
        pytest.param("KEYSTILE_LOG_LEVEL", "verbose", id="log-level"),
        pytest.param("KEYSTILE_JWT_TTL_SECONDS", "0", id="ttl-zero"),
        pytest.param("KEYSTILE_ACCEPT_QUERY_KEY", "perhaps", id="bool-word"),
    ],
)
def test_an_invalid_setting_is_rejected_with_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError, match=name.removeprefix("KEYSTILE_").lower()):
        Settings()
