"""`KeystileClient`: the blocking client, over one pooled `httpx.Client`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import TypeVar, Unpack

import httpx

from keystile.client import calls
from keystile.client.calls import Call
from keystile.client.core import ClientCore
from keystile.client.models import Key, KeyChanges, KeySettings, KeyUsage, VerifyResult

T = TypeVar("T")


class KeystileClient:
    """A keystile server's API: verify keys, and manage the token owner's keys.

    `token` is a user's bearer JWT (from `POST /auth/token`): it manages that user's keys, and verifies any key if the
    user is an admin. `api_key` is a key with scope `keys:verify`: when given, verify authenticates with it (its
    owner's keys, or every key if an admin owns it) and key management still uses `token`.

    `timeout` bounds each request in seconds. Idempotent calls (reads and revoke) are retried `retries` times when
    the connection fails, after `backoff`, then twice as long each time; verify, create, update and rotate never are
    (a retried verify could spend rate limit and quota twice). `cache_ttl` > 0 keeps VALID verify answers that many
    seconds; off by default, see `VerifyCache` for what a cached answer skips. `transport` and `sleep` are for tests
    and custom networking.

    Use it as a context manager, or call `close()`: it holds a connection pool.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        cache_ttl: float = 0.0,
        retries: int = 2,
        backoff: float = 0.1,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._core = ClientCore(
            base_url,
            token=token,
            api_key=api_key,
            timeout=timeout,
            cache_ttl=cache_ttl,
            retries=retries,
            backoff=backoff,
        )
        self._http = httpx.Client(transport=transport, **self._core.http_options())
        self._sleep = sleep

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    def __enter__(self) -> KeystileClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def verify(self, key: str, scopes: Iterable[str] = (), cost: int = 1, ip: str | None = None) -> VerifyResult:
        """Check `key` for the `scopes` it must hold, drawing `cost` from its rate limit and quota, for a client at
        `ip` (needed for keys with an allowlist). Refusals are results (`valid` False, `code` says why), not
        exceptions; exceptions mean the call itself failed."""
        call = calls.verify(key, scopes, cost, ip)
        cached = self._core.cache.get(call)
        return cached if cached is not None else self._core.cache.keep(call, self._send(call))

    def create_key(self, name: str, **settings: Unpack[KeySettings]) -> Key:
        """Issue a key; the result's `key` is the raw key, shown this once."""
        return self._send(calls.create_key(name, settings))

    def list_keys(self, *, limit: int = 50, offset: int = 0) -> list[Key]:
        """The token owner's keys, newest first, one page."""
        return self._send(calls.list_keys(limit, offset))

    def get_key(self, key_id: int) -> Key:
        return self._send(calls.get_key(key_id))

    def update_key(self, key_id: int, **changes: Unpack[KeyChanges]) -> Key:
        """Change only the fields given; `None` clears `expires_at`, `rate_limit` and `quota`."""
        return self._send(calls.update_key(key_id, changes))

    def revoke_key(self, key_id: int) -> Key:
        """Revoke for good; revoking again changes nothing."""
        return self._send(calls.revoke_key(key_id))

    def rotate_key(self, key_id: int, *, grace_seconds: int = 0) -> Key:
        """Replace the key with a new one (returned, with its raw `key`); the old one works `grace_seconds` more."""
        return self._send(calls.rotate_key(key_id, grace_seconds))

    def key_usage(
        self,
        key_id: int,
        *,
        interval: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> KeyUsage:
        """Verifications of the key per interval. A server without this route answers NotFoundError."""
        return self._send(calls.key_usage(key_id, interval, since, until))

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.request(**self._core.request_options(call))
            except httpx.TransportError as error:
                delay = self._core.retry_delay(call, error, attempt)
                if delay is None:
                    raise self._core.connection_error(error) from error
                self._sleep(delay)
                attempt += 1
                continue
            return self._core.result(call, response)
