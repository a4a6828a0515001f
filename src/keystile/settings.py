"""Deployment settings, read from `KEYSTILE_*` environment variables (README, "Settings").

Settings are built on demand (`Settings()` inside `create_app` or a CLI command), never at import time, so tests and
embedding apps can pass their own.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from keystile.ratelimit.policy import RateLimitPolicy

# JWT HS256 keys shorter than the hash output weaken the MAC (RFC 7518 section 3.2).
MIN_SECRET_KEY_BYTES = 32

# A rate-limit policy is written `<requests>/<seconds>` in the environment, not as JSON.
_PARSE_POLICY = BeforeValidator(RateLimitPolicy.from_text)


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected SECRET_KEY must not be printed in the start-up error.
    model_config = SettingsConfigDict(env_prefix="KEYSTILE_", extra="ignore", hide_input_in_errors=True)

    database_url: str = "sqlite+aiosqlite:///./keystile.db"
    redis_url: str | None = None
    secret_key: SecretStr | None = None
    key_prefix: str = Field(default="ks", pattern=r"^[a-z][a-z0-9_]{0,15}$")
    accept_query_key: bool = False
    default_rate_limit: Annotated[RateLimitPolicy | None, NoDecode, _PARSE_POLICY] = None
    rate_limit_failure: Literal["open", "closed"] = "open"
    allow_registration: bool = True
    jwt_ttl_seconds: int = Field(default=900, ge=30, le=86_400 * 30)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # text: uvicorn-style lines; json: one object per line (time, level, logger, message, request_id, ...).
    log_format: Literal["text", "json"] = "text"
    # One OpenTelemetry span per verification (needs the `otel` extra and a configured tracer provider).
    otel_enabled: bool = False
    # Serve /docs and /openapi.json (their assets come from keystile itself, never a CDN).
    docs_enabled: bool = True
    # While the database is unreachable, cached keys keep verifying for at most this long past their refresh time.
    stale_if_error_seconds: int = Field(default=300, ge=0, le=86_400)
    # Usage history (GET /keys/{id}/usage) is kept this many days; the running service deletes older hours itself.
    usage_retention_days: int = Field(default=90, ge=1, le=3650)

    # Not in the public contract, but tunable: brute-force limits on /auth/token (README, "Rate limits").
    login_max_failures_per_email: int = Field(default=10, ge=1)
    login_max_failures_per_ip: int = Field(default=30, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=1)
    # Failed API-key attempts per client address: stricter than normal traffic (see docs/RATE_LIMITS.md).
    key_failure_limit: Annotated[RateLimitPolicy, NoDecode, _PARSE_POLICY] = RateLimitPolicy(
        limit=30, window_seconds=60
    )

    # Events, webhooks and leaks (API.md section 9; docs/WEBHOOKS.md).
    # Allow webhook URLs on loopback, private, link-local and other non-public addresses (refused otherwise: SSRF).
    webhook_allow_private: bool = False
    # key.expiring is sent once when a key comes this close to its expiry.
    expiry_warning_seconds: int = Field(default=604_800, ge=1, le=86_400 * 365)
    # What a reported leak of an active key does: revoke it, or only audit and announce it.
    leak_action: Literal["revoke", "notify"] = "revoke"
    # A JSON file of GitHub's secret scanning public keys; unset: POST /v1/leaks/github answers 404.
    github_scanning_keys: str | None = None
    # Delivery tuning (not in the contract): seconds between a failed attempt and the next, one per retry.
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0]
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # How long a claimed delivery is held by its process before another may take it over (a crash mid-send).
    webhook_lease_seconds: float = Field(default=60.0, gt=0, le=3600)
    webhook_concurrency: int = Field(default=32, ge=1, le=1000)
    webhook_endpoint_concurrency: int = Field(default=8, ge=1, le=1000)
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # An endpoint whose deliveries have failed for this many days in a row is disabled (0: never).
    webhook_disable_after_days: int = Field(default=5, ge=0, le=365)
    expiry_scan_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Delivered and failed events, and their attempts, are deleted this many days after they were made (never a
    # pending one); the running service prunes them itself, at most once an hour (events/retention.py).
    event_retention_days: int = Field(default=30, ge=1, le=3650)

    @field_validator("github_scanning_keys", mode="before")
    @classmethod
    def _blank_path_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_delays")
    @classmethod
    def _delays_are_sane(cls, value: list[float]) -> list[float]:
        if len(value) > 20 or any(delay < 0 or delay > 7 * 86_400 for delay in value):
            raise ValueError("at most 20 delays, each 0..604800 seconds")
        return value

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Settings:
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError("webhook_lease_seconds must exceed webhook_timeout_seconds")
        return self

    @field_validator("redis_url", "secret_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_KEY_BYTES} bytes")
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Connection URLs may carry passwords: show them as SQLAlchemy does, with the password masked.
        for name, value in super().__repr_args__():
            if name in ("database_url", "redis_url") and isinstance(value, str):
                value = make_url(value).render_as_string(hide_password=True)
            yield name, value

    @property
    def is_embedded(self) -> bool:
        return make_url(self.database_url).get_backend_name() == "sqlite"

    def resolved_secret_key(self) -> str:
        """The configured secret, or in embedded mode one generated once and kept beside the SQLite file."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        if not self.is_embedded:
            raise RuntimeError("KEYSTILE_SECRET_KEY is required unless the database is SQLite")
        return _load_or_create_secret(_secret_path_for(self.database_url))


def _secret_path_for(database_url: str) -> Path:
    database = make_url(database_url).database
    if not database or database == ":memory:":
        return Path("keystile.secret").resolve()
    return Path(database).resolve().with_suffix(".secret")


def _load_or_create_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write a private temporary file, then link it into place: link() fails if the name exists, so two processes
    # starting at once agree on one secret and neither can read a half-written file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_urlsafe(48))
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_text().strip()
