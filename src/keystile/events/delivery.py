"""One HTTP attempt of a webhook: signed, to a checked address, bounded in time and in what is read back.

- 10 s for the whole attempt (connect, send, answer), not per read: a receiver trickling bytes cannot hold a slot.
- Redirects are not followed (a 3xx is recorded as it is): following one would send the event, and its signature, to
  a URL nobody checked.
- At most 64 KiB of the answer is read; the rest is dropped with the connection.
- The environment's proxy settings are ignored (`trust_env=False`): a proxy would connect to the host itself and
  bypass the address check.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from keystile import __version__
from keystile.events import signing
from keystile.webhooks.ssrf import UnsafeURLError, destination

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = f"keystile-webhooks/{__version__}"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def new_client(*, max_connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"user-agent": USER_AGENT, "content-type": "application/json"},
    )


async def attempt(
    client: httpx.AsyncClient,
    *,
    url: str,
    secret: str,
    message_id: str,
    body: bytes,
    allow_private: bool,
    timeout_seconds: float,
) -> AttemptResult:
    """POST `body` to `url` once; what came of it (never raises for anything the receiver or network does)."""
    try:
        async with asyncio.timeout(timeout_seconds):
            target = await destination(url, allow_private=allow_private)
            headers = signing.headers(secret, message_id=message_id, timestamp=int(time.time()), body=body)
            if target.host_header is not None:
                headers["host"] = target.host_header
            extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
            request = client.build_request(
                "POST", target.url, content=body, headers=headers, extensions=extensions, timeout=timeout_seconds
            )
            response = await client.send(request, stream=True)
            try:
                await _read_at_most(response, MAX_RESPONSE_BYTES)
            finally:
                await response.aclose()
    except TimeoutError:
        return AttemptResult(None, f"timed out after {timeout_seconds:g} s")
    except UnsafeURLError as error:
        return AttemptResult(None, f"refused: {error}"[:200])
    except httpx.TimeoutException:
        return AttemptResult(None, f"timed out after {timeout_seconds:g} s")
    except httpx.ConnectError:
        return AttemptResult(None, "connection failed")
    except httpx.HTTPError as error:
        return AttemptResult(None, f"{type(error).__name__}"[:200])
    if 300 <= response.status_code < 400:
        return AttemptResult(response.status_code, "redirect not followed")
    return AttemptResult(response.status_code, None)


async def _read_at_most(response: httpx.Response, limit: int) -> None:
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= limit:
            return
