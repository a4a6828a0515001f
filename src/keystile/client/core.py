"""`ClientCore`: everything the sync and async clients share besides the calls themselves: credentials, httpx
options, reading answers into results or exceptions, the retry rule and the verify cache.

Each client is then a thin loop around its own httpx client: send, and on a transport error ask `retry_delay`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx

from keystile import __version__
from keystile.client.cache import VerifyCache
from keystile.client.calls import Call
from keystile.client.errors import KeystileConnectionError, KeystileError, error_from_response, error_from_transport

T = TypeVar("T")

USER_AGENT = f"keystile-client/{__version__}"
MAX_BACKOFF_SECONDS = 2.0

# Failures that happen before a request is sent: retrying them cannot make the server act twice. A read error or a
# read timeout may come after the server acted, so it is never retried, even for an idempotent call (a late answer
# is not worth a second wait).
RETRYABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


class ClientCore:
    """The shared half of `KeystileClient` and `AsyncKeystileClient`; holds the secrets, and never shows them."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        api_key: str | None,
        timeout: float,
        cache_ttl: float,
        retries: int,
        backoff: float,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self.base_url = str(base_url).rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.cache = VerifyCache(cache_ttl)
        self._token = token
        self._api_key = api_key

    def __repr__(self) -> str:
        return self.describe(type(self).__name__)

    def describe(self, class_name: str) -> str:
        """`repr()` of a client: whether it has credentials, never what they are."""
        token = "'***'" if self._token is not None else "None"
        api_key = "'***'" if self._api_key is not None else "None"
        return (
            f"{class_name}(base_url={self.base_url!r}, token={token}, api_key={api_key}, "
            f"timeout={self.timeout}, cache_ttl={self.cache.ttl})"
        )

    def http_options(self) -> dict[str, Any]:
        """Arguments for the httpx client: one per keystile client, so connections are pooled and reused."""
        headers = {"User-Agent": USER_AGENT}
        return {"base_url": self.base_url, "timeout": httpx.Timeout(self.timeout), "headers": headers}

    def request_options(self, call: Call[Any]) -> dict[str, Any]:
        """Arguments for `httpx.Client.request` (and the async one). Credentials go per request, so verify sends the
        API key and key management the token, each only where it is needed."""
        options: dict[str, Any] = {"method": call.method, "url": call.path, "headers": self._credentials(call)}
        if call.params:
            options["params"] = dict(call.params)
        if call.body is not None:
            options["json"] = call.body
        return options

    def _credentials(self, call: Call[Any]) -> dict[str, str]:
        if call.as_verifier and self._api_key is not None:
            return {"X-API-Key": self._api_key}
        if self._token is not None:
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    def result(self, call: Call[T], response: httpx.Response) -> T:
        """The call's result from a 2xx answer; otherwise the exception for the status, raised."""
        if not response.is_success:
            raise error_from_response(response)
        try:
            return call.parse(response.json())
        except (ValueError, KeyError, TypeError) as error:
            raise KeystileError(
                f"unexpected answer to {call.method} {call.path}: {type(error).__name__}",
                status_code=response.status_code,
            ) from None

    def retry_delay(self, call: Call[Any], error: httpx.TransportError, attempt: int) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up: only idempotent calls, only failures
        to connect, at most `retries` times, waiting `backoff`, then twice as long each time (at most 2 s)."""
        if not call.idempotent or not isinstance(error, RETRYABLE_ERRORS) or attempt >= self.retries:
            return None
        return min(self.backoff * 2.0**attempt, MAX_BACKOFF_SECONDS)

    def connection_error(self, error: httpx.TransportError) -> KeystileConnectionError:
        return error_from_transport(error, self.base_url)
