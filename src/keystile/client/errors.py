"""The client's exceptions: one base, `KeystileError`, and one class per answer a caller handles differently.

Messages carry the status and the server's `detail`, never a request's headers or body: the token, the caller's API
key and the key being verified travel only there, so no traceback or log line built from an exception can show them.
"""

from __future__ import annotations

from typing import Any

import httpx

DETAIL_TEXT_LIMIT = 200  # a non-JSON error body (from a proxy, say) is cut to this many characters


class KeystileError(Exception):
    """Anything that went wrong talking to keystile. `status_code` and `detail` are the server's answer, when there
    was one (None for connection failures and timeouts)."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class AuthenticationError(KeystileError):
    """401: no credentials, or a token or API key the server does not accept."""


class PermissionDeniedError(KeystileError):
    """403: the credentials are good but not enough (verify without admin rights or the `keys:verify` scope)."""


class NotFoundError(KeystileError):
    """404: no such key, or a key someone else owns (keystile never says which), or a route this server lacks."""


class ConflictError(KeystileError):
    """409: the key's state forbids the change (rotating a revoked, expired or already rotated key)."""


class ValidationError(KeystileError):
    """422: the server rejected the input; `detail` is its list of `{type, loc, msg}` (never the input itself)."""


class RateLimitedError(KeystileError):
    """429: the caller's key is rate limited or out of quota, or too many failed logins. `retry_after` is the
    server's Retry-After in seconds, None when waiting does not help (an exhausted quota)."""

    def __init__(
        self, message: str, *, status_code: int | None = None, detail: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code, detail=detail)
        self.retry_after = retry_after


class KeystileConnectionError(KeystileError):
    """The server could not be reached, or the connection failed before an answer came."""


class KeystileTimeoutError(KeystileConnectionError):
    """No answer within the client's timeout. Never retried: the server may have acted on the request."""


_ERRORS_BY_STATUS: dict[int, type[KeystileError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitedError,
}


def error_from_response(response: httpx.Response) -> KeystileError:
    """The exception for a non-2xx answer, carrying its status and the server's detail."""
    detail = _detail_of(response)
    message = f"{response.status_code} {response.reason_phrase}: {_describe(detail)}"
    error_class = _ERRORS_BY_STATUS.get(response.status_code, KeystileError)
    if error_class is RateLimitedError:
        retry_after = _retry_after(response.headers.get("retry-after"))
        return RateLimitedError(message, status_code=response.status_code, detail=detail, retry_after=retry_after)
    return error_class(message, status_code=response.status_code, detail=detail)


def error_from_transport(error: httpx.TransportError, base_url: str) -> KeystileConnectionError:
    """The exception for a request that got no answer. httpx's own message names the failure (refused, reset), and
    carries no header or body."""
    if isinstance(error, httpx.TimeoutException):
        return KeystileTimeoutError(f"no answer from {base_url} in time ({type(error).__name__})")
    return KeystileConnectionError(f"could not reach {base_url}: {type(error).__name__}: {error}")


def _detail_of(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:DETAIL_TEXT_LIMIT]
    return body.get("detail", body) if isinstance(body, dict) else body


def _describe(detail: Any) -> str:
    """FastAPI's 422 list as `loc: msg; ...`, anything else as text."""
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        return "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}" for item in detail
        )
    return str(detail)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; keystile sends whole seconds (an HTTP date from a proxy is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value)
