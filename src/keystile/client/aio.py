"""`AsyncKeystileClient`: `KeystileClient` for asyncio, over one pooled `httpx.AsyncClient`. Same arguments, same
calls, same results and exceptions; see `KeystileClient` for what each does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from types import TracebackType
from typing import TypeVar, Unpack

import httpx

from keystile.client import calls
from keystile.client.calls import Call
from keystile.client.core import ClientCore
from keystile.client.models import Key, KeyChanges, KeySettings, KeyUsage, VerifyResult

T = TypeVar("T")


class AsyncKeystileClient:
    """The asyncio twin of `KeystileClient`. Use it with `async with`, or call `aclose()`."""

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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
        self._http = httpx.AsyncClient(transport=transport, **self._core.http_options())
        self._sleep = sleep

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    async def __aenter__(self) -> AsyncKeystileClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def verify(self, key: str, scopes: Iterable[str] = (), cost: int = 1, ip: str | None = None) -> VerifyResult:
        call = calls.verify(key, scopes, cost, ip)
        cached = self._core.cache.get(call)
        return cached if cached is not None else self._core.cache.keep(call, await self._send(call))

    async def create_key(self, name: str, **settings: Unpack[KeySettings]) -> Key:
        return await self._send(calls.create_key(name, settings))

    async def list_keys(self, *, limit: int = 50, offset: int = 0) -> list[Key]:
        return await self._send(calls.list_keys(limit, offset))

    async def get_key(self, key_id: int) -> Key:
        return await self._send(calls.get_key(key_id))

    async def update_key(self, key_id: int, **changes: Unpack[KeyChanges]) -> Key:
        return await self._send(calls.update_key(key_id, changes))

    async def revoke_key(self, key_id: int) -> Key:
        return await self._send(calls.revoke_key(key_id))

    async def rotate_key(self, key_id: int, *, grace_seconds: int = 0) -> Key:
        return await self._send(calls.rotate_key(key_id, grace_seconds))

    async def key_usage(
        self,
        key_id: int,
        *,
        interval: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> KeyUsage:
        return await self._send(calls.key_usage(key_id, interval, since, until))

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.request(**self._core.request_options(call))
            except httpx.TransportError as error:
                delay = self._core.retry_delay(call, error, attempt)
                if delay is None:
                    raise self._core.connection_error(error) from error
                await self._sleep(delay)
                attempt += 1
                continue
            return self._core.result(call, response)
