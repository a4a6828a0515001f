"""`keystile.asgi.APIKeyMiddleware`: any ASGI app gets the answers keystile's own `/data/export` gives, and keystile's
lifecycle runs on the app's ASGI lifespan.

The comparisons serve a Starlette app behind the middleware over the very instance keystile's own app runs (`client`),
so both see the same keys, limits and clock; each case asks both and compares status, body and the headers the
dependency sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keystile.asgi import APIKeyMiddleware
from keystile.clock import FakeClock
from keystile.fastapi import KeyRecord, RequireScopes
from keystile.instance import Keystile
from keystile.keys.models import ApiKey
from keystile.keys.schemas import KeyCreate
from keystile.ratelimit.guard import LimiterClosedError
from keystile.users import service as users_service
from tests.conftest import MakeClient, make_settings
from tests.helpers import CHEAP_PASSWORDS, EXPORT, PASSWORD, KeystileClient, create_key, key_header, user_headers

PROTECTED = "/api/whoami"
# What the dependency decides about a response; the rest (date, nosniff from keystile's own app) is the app's.
COMPARED_HEADERS = ("www-authenticate", "retry-after", "ratelimit-policy", "ratelimit", "content-type")

Answer = tuple[int, Any, dict[str, str | None]]


def answer(response: httpx.Response) -> Answer:
    return response.status_code, response.json(), {name: response.headers.get(name) for name in COMPARED_HEADERS}


def starlette_app(keystile: Keystile, seen: list[KeyRecord] | None = None, **options: Any) -> APIKeyMiddleware:
    """A Starlette app of a library user's own, behind the middleware; protected routes under /api/ by default."""

    async def whoami(request: Request) -> JSONResponse:
        key = request.state.api_key
        if seen is not None:
            seen.append(key)
        return JSONResponse({"key": key.id, "owner": key.user_id})

    async def public(request: Request) -> JSONResponse:
        return JSONResponse({"public": True, "key": "api_key" in request.scope.get("state", {})})

    routes = [Route(PROTECTED, whoami, methods=["GET", "POST"]), Route("/public", public)]
    options.setdefault("protect", ["/api/"])
    return APIKeyMiddleware(Starlette(routes=routes), keystile, **options)


def http_client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://starlette.test")


@pytest.fixture
async def wrapped(client: KeystileClient) -> AsyncIterator[httpx.AsyncClient]:
    """The middleware over `client`'s running instance (already started, so no lifespan here)."""
    async with http_client(starlette_app(client.keystile)) as http:
        yield http


async def both(
    client: KeystileClient, wrapped: httpx.AsyncClient, headers: dict[str, str], query: str = ""
) -> tuple[Answer, Answer]:
    """keystile's own answer for /data/export, then the middleware's for the same request."""
    ours = await client.get(EXPORT + query, headers=headers)
    theirs = await wrapped.get(PROTECTED + query, headers=headers)
    return answer(ours), answer(theirs)


# The same answers as the FastAPI dependency


@pytest.mark.parametrize(
    "how",
    ["missing", "garbage", "revoked", "ip-not-allowed", "query-key-disabled", "empty-header"],
)
async def test_a_refused_key_gets_the_answer_data_export_gives(
    client: KeystileClient, wrapped: httpx.AsyncClient, how: str
) -> None:
    headers = await user_headers(client)
    created = await create_key(client, headers, ip_allowlist=["10.0.0.0/8"] if how == "ip-not-allowed" else [])
    presented, query = key_header(created), ""
    if how == "missing":
        presented = {}
    elif how == "garbage":
        presented = {"X-API-Key": "invalid-key-here"}
    elif how == "revoked":
        assert (await client.post(f"/keys/{created['id']}/revoke", headers=headers)).status_code == 200
    elif how == "query-key-disabled":
        presented, query = {}, f"?api_key={created['key']}"
    elif how == "empty-header":
        presented = {"X-API-Key": ""}

    ours, theirs = await both(client, wrapped, presented, query)

    assert ours[0] in {401, 403}, ours
    assert theirs == ours


async def test_a_query_key_where_the_deployment_accepts_them_passes_like_the_header(make_client: MakeClient) -> None:
    client = await make_client(accept_query_key=True)
    created = await create_key(client, await user_headers(client))
    async with http_client(starlette_app(client.keystile)) as wrapped:
        missing = await both(client, wrapped, {})
        passed = await wrapped.get(f"{PROTECTED}?api_key={created['key']}")

    assert missing[1] == missing[0]
    assert missing[1][1] == {"detail": "API key required (header X-API-Key or query ?api_key=)"}
    assert passed.status_code == 200
    assert passed.json()["key"] == created["id"]


async def test_a_rate_limited_key_gets_the_same_429_retry_after_and_ratelimit_fields(
    client: KeystileClient, wrapped: httpx.AsyncClient
) -> None:
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 1, "window_seconds": 60})
    first = await client.get(EXPORT, headers=key_header(created))

    ours, theirs = await both(client, wrapped, key_header(created))

    assert first.status_code == 200
    assert ours[0] == 429
    assert theirs == ours
    assert theirs[1] == {"detail": "API key rate limit exceeded"}
    assert theirs[2]["retry-after"] is not None
    assert theirs[2]["ratelimit"] is not None


async def test_an_address_with_too_many_failed_attempts_gets_the_same_429(make_client: MakeClient) -> None:
    client = await make_client(key_failure_limit="2/60")
    async with http_client(starlette_app(client.keystile)) as wrapped:
        for _ in range(2):  # counted per address: both apps see the same test client address
            assert (await client.get(EXPORT, headers={"X-API-Key": "ks_nope"})).status_code == 401
        ours, theirs = await both(client, wrapped, {"X-API-Key": "ks_nope"})

    assert ours[0] == 429
    assert theirs == ours
    assert theirs[1] == {"detail": "Too many failed API key attempts"}


async def test_a_closed_limiter_gets_the_same_503(client: KeystileClient, monkeypatch: pytest.MonkeyPatch) -> None:
    class DownLimiter:
        async def verify(self, *args: Any, **kwargs: Any) -> None:
            raise LimiterClosedError

    monkeypatch.setattr(client.keystile, "verifier", DownLimiter())
    async with http_client(starlette_app(client.keystile)) as wrapped:
        ours, theirs = await both(client, wrapped, {"X-API-Key": "ks_anything"})

    assert ours[0] == 503
    assert theirs == ours
    assert theirs[2]["retry-after"] == "1"


async def test_a_key_without_the_middlewares_scopes_gets_the_403_require_scopes_gives(client: KeystileClient) -> None:
    fastapi_app = FastAPI()
    client.keystile.install(fastapi_app)

    @fastapi_app.get(PROTECTED)
    async def whoami(key: Annotated[KeyRecord, RequireScopes("data:read", "data:write")]) -> dict[str, Any]:
        return {"key": key.id}

    headers = await user_headers(client)
    reader = await create_key(client, headers, scopes=["data:read"])
    writer = await create_key(client, headers, scopes=["data:read", "data:write"])
    scoped = starlette_app(client.keystile, scopes=["data:read", "data:write"])
    async with http_client(fastapi_app) as dependency, http_client(scoped) as middleware:
        refused = [answer(await app.get(PROTECTED, headers=key_header(reader))) for app in (dependency, middleware)]
        admitted = [await app.get(PROTECTED, headers=key_header(writer)) for app in (dependency, middleware)]

    assert refused[0][0] == 403
    assert refused[1] == refused[0]
    assert refused[1][1] == {"detail": "API key lacks required scope: data:write"}
    assert [response.status_code for response in admitted] == [200, 200]


# What the app sees


async def test_a_valid_key_reaches_the_app_with_its_record_in_the_request_state(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client), scopes=["data:read"])
    seen: list[KeyRecord] = []
    async with http_client(starlette_app(client.keystile, seen)) as wrapped:
        response = await wrapped.post(PROTECTED, headers=key_header(created))

    assert response.status_code == 200
    assert response.json() == {"key": created["id"], "owner": seen[0].user_id}
    assert isinstance(seen[0], KeyRecord)
    assert seen[0].id == created["id"]
    assert seen[0].scopes == {"data:read"}


async def test_a_valid_key_gets_the_ratelimit_fields_the_dependency_sets(
    client: KeystileClient, wrapped: httpx.AsyncClient
) -> None:
    created = await create_key(client, await user_headers(client), rate_limit={"limit": 10, "window_seconds": 60})

    ours, theirs = await both(client, wrapped, key_header(created))

    assert (ours[0], theirs[0]) == (200, 200)
    assert theirs[2]["ratelimit-policy"] == ours[2]["ratelimit-policy"] == '"key";q=10;w=60'
    assert ours[2]["ratelimit"] is not None
    assert theirs[2]["ratelimit"] == ours[2]["ratelimit"].replace("r=9", "r=8")  # one more use spent


async def test_the_key_is_added_to_state_the_server_already_gave_the_request(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client))
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope["state"]))
        await JSONResponse({})(scope, receive, send)

    async def with_server_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = {"tenant": "blue"}  # as a server copies the lifespan state into each request
        await APIKeyMiddleware(app, client.keystile)(scope, receive, send)

    async with http_client(with_server_state) as wrapped:
        assert (await wrapped.get("/anything", headers=key_header(created))).status_code == 200

    assert seen[0]["tenant"] == "blue"
    assert seen[0]["api_key"].id == created["id"]


async def test_a_path_outside_the_protected_prefixes_passes_without_a_key(wrapped: httpx.AsyncClient) -> None:
    response = await wrapped.get("/public")

    assert response.status_code == 200
    assert response.json() == {"public": True, "key": False}


async def test_everything_is_protected_by_default(client: KeystileClient) -> None:
    async with http_client(starlette_app(client.keystile, protect=("/",))) as wrapped:
        response = await wrapped.get("/public")

    assert response.status_code == 401
    assert response.json() == {"detail": "API key required (header X-API-Key)"}


async def test_a_websocket_outside_the_protected_prefixes_passes_through_to_the_app(client: KeystileClient) -> None:
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["type"])

    async def nothing() -> Message:
        raise AssertionError("not read")

    async def discard(message: Message) -> None:
        raise AssertionError("not sent")

    middleware = APIKeyMiddleware(app, client.keystile, protect=["/api/"])
    await middleware({"type": "websocket", "path": "/ws"}, nothing, discard)

    assert reached == ["websocket"]


@pytest.mark.parametrize("prefix", ["api/", ""])
def test_a_protect_prefix_that_is_not_a_path_is_refused(client: KeystileClient, prefix: str) -> None:
    with pytest.raises(ValueError, match="starting with '/'"):
        APIKeyMiddleware(Starlette(), client.keystile, protect=[prefix])


# The lifespan


class RecordingKeystile(Keystile):
    """A Keystile that notes when it starts and stops, in `steps` shared with the app around it."""

    steps: list[str]

    async def __aenter__(self) -> Keystile:
        self.steps.append("keystile started")
        return await super().__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        await super().__aexit__(*exc_info)
        self.steps.append("keystile stopped")


def recording_keystile(database_url: str, clock: FakeClock) -> RecordingKeystile:
    # usage_flush_seconds: an hour, so only the shutdown writes the counts the tests read back.
    keystile = RecordingKeystile(
        make_settings(database_url), clock=clock, passwords=CHEAP_PASSWORDS, usage_flush_seconds=3600
    )
    keystile.steps = []
    return keystile


class LifespanFailedError(Exception):
    pass


@asynccontextmanager
async def served(app: ASGIApp, events: list[str] | None = None) -> AsyncIterator[None]:
    """Run `app`'s ASGI lifespan as a server does: startup before the block, shutdown after it. The moment the server
    hears that shutdown is complete (and may end the process) is noted in `events`."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, to_app.get, from_app.put))

    async def answer_to(message_type: str) -> Message:
        await to_app.put({"type": message_type})
        answer = asyncio.ensure_future(from_app.get())
        done, _ = await asyncio.wait({answer, lifespan}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if answer not in done:
            answer.cancel()
            raise AssertionError(f"no answer to {message_type}: {lifespan}")
        return answer.result()

    started = await answer_to("lifespan.startup")
    if started["type"] != "lifespan.startup.complete":
        await asyncio.gather(lifespan, return_exceptions=True)
        raise LifespanFailedError(started.get("message", started))
    yield
    assert await answer_to("lifespan.shutdown") == {"type": "lifespan.shutdown.complete"}
    if events is not None:
        events.append("server heard shutdown complete")
    await asyncio.wait_for(lifespan, 10)


async def issue_key(keystile: Keystile, clock: FakeClock) -> tuple[int, str]:
    async with keystile.session_factory() as session:
        owner = await users_service.create_user(
            session, email="owner@example.com", password=PASSWORD, passwords=keystile.passwords, now=clock()
        )
        await session.commit()
        issued = await keystile.key_manager(session).create(owner_id=owner.id, spec=KeyCreate(name="asgi"))
    return issued.row.id, issued.raw


async def stored_use_count(database_url: str, key_pk: int) -> int:
    reader = Keystile(make_settings(database_url))
    try:
        async with reader.session_factory() as session:
            row = await session.get(ApiKey, key_pk)
        assert row is not None
        return row.use_count
    finally:
        await reader.engine.dispose()


def starlette_with_lifespan(keystile: RecordingKeystile, on_shutdown: Callable[[], Any] | None = None) -> ASGIApp:
    """The app's own lifespan notes its startup and shutdown, and runs `on_shutdown` in it."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        keystile.steps.append("app started")
        yield
        if on_shutdown is not None:
            await on_shutdown()
        keystile.steps.append("app stopped")

    app = starlette_app(keystile)
    assert isinstance(app.app, Starlette)
    app.app.router.lifespan_context = lifespan
    return app


async def test_the_lifespan_runs_keystile_around_the_app_and_writes_usage_on_shutdown(
    database_url: str, clock: FakeClock
) -> None:
    keystile = recording_keystile(database_url, clock)
    key_pk, raw = await issue_key(keystile, clock)

    async def use_the_key_once_more() -> None:  # the app's shutdown may still use keystile
        assert (await keystile.verifier.verify(raw)).valid

    app = starlette_with_lifespan(keystile, use_the_key_once_more)
    async with served(app, keystile.steps), http_client(app) as http:
        for _ in range(3):
            assert (await http.get(PROTECTED, headers={"X-API-Key": raw})).status_code == 200

    assert keystile.steps == [
        "keystile started",
        "app started",
        "app stopped",
        "keystile stopped",
        "server heard shutdown complete",
    ]
    assert await stored_use_count(database_url, key_pk) == 4


async def test_an_app_without_lifespan_support_still_gets_keystile_started_and_stopped(
    database_url: str, clock: FakeClock
) -> None:
    keystile = recording_keystile(database_url, clock)
    key_pk, raw = await issue_key(keystile, clock)

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "this app knows nothing of lifespans"
        await JSONResponse({"key": scope["state"]["api_key"].id})(scope, receive, send)

    app = APIKeyMiddleware(bare, keystile)
    async with served(app, keystile.steps), http_client(app) as http:
        response = await http.get("/", headers={"X-API-Key": raw})

    assert response.json() == {"key": key_pk}
    assert keystile.steps == ["keystile started", "keystile stopped", "server heard shutdown complete"]
    assert await stored_use_count(database_url, key_pk) == 1


async def test_a_failed_app_startup_is_reported_and_keystile_is_stopped(database_url: str, clock: FakeClock) -> None:
    keystile = recording_keystile(database_url, clock)

    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("the app's own startup failed")
        yield

    app = APIKeyMiddleware(Starlette(lifespan=broken), keystile)
    with pytest.raises(LifespanFailedError, match="the app's own startup failed"):
        async with served(app):
            pass

    assert keystile.steps == ["keystile started", "keystile stopped"]


async def test_one_instance_behind_two_middlewares_is_started_once(database_url: str, clock: FakeClock) -> None:
    keystile = recording_keystile(database_url, clock)
    inner = starlette_with_lifespan(keystile)
    app = APIKeyMiddleware(inner, keystile, protect=["/admin/"], scopes=["admin"])

    async with served(app):
        pass

    assert keystile.steps == ["keystile started", "app started", "app stopped", "keystile stopped"]


# Websockets under a protected prefix


async def websocket_call(client: KeystileClient, headers: list[tuple[bytes, bytes]]) -> tuple[list[Message], list[Any]]:
    """One websocket handshake through the middleware over `client`'s instance: what was sent back, and the keys the
    app saw (an app that accepts and closes)."""
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"]["api_key"])
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    sent: list[Message] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/api/stream",
        "headers": headers,
        "query_string": b"",
        "client": ("127.0.0.1", 1),
    }
    await APIKeyMiddleware(app, client.keystile, protect=["/api/"])(scope, receive, send)
    return sent, seen


async def test_a_websocket_without_a_key_under_a_protected_prefix_is_closed_1008_before_the_app(
    client: KeystileClient,
) -> None:
    sent, seen = await websocket_call(client, [])

    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "API key required (header X-API-Key)"}]
    assert seen == []


async def test_a_websocket_with_a_valid_key_reaches_the_app_with_its_key(client: KeystileClient) -> None:
    created = await create_key(client, await user_headers(client))

    sent, seen = await websocket_call(client, [(b"x-api-key", created["key"].encode())])

    assert [message["type"] for message in sent] == ["websocket.accept", "websocket.close"]
    assert [key.id for key in seen] == [created["id"]]
