"""keystile.request_id: every HTTP request has an id (its own `X-Request-ID` when acceptable, else a new one), the
response echoes it, every record logged while it is served carries it, and one access line follows the response.

Most cases call the middleware with hand-made ASGI scopes, so header bytes no HTTP client would send can be tried.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from keystile.app import create_app
from keystile.logs import ACCESS_LOGGER, current_request_id
from keystile.request_id import RequestContext
from tests.conftest import make_settings
from tests.helpers import CHEAP_PASSWORDS

GENERATED = re.compile(r"[0-9a-f]{32}")
VISIBLE_ASCII = bytes(range(0x21, 0x7F))


class Recorder:
    """The app behind the middleware: answers 200 (or what it is told), remembering the request id it saw."""

    def __init__(self, status: int = 200, state: dict[str, Any] | None = None) -> None:
        self.status = status
        self.state = state or {}
        self.seen_ids: list[str | None] = []
        self.scope_ids: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen_ids.append(current_request_id.get())
        self.scope_ids.append(scope["state"]["request_id"])
        scope["state"].update(self.state)
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})


def http_scope(headers: Sequence[tuple[bytes, bytes]] = (), path: str = "/x", query: bytes = b"") -> Scope:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": list(headers),
        "client": ("127.0.0.1", 5000),
    }


async def call(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def echoed(sent: list[Message]) -> list[str]:
    """The values of `x-request-id` in the response start message."""
    return [value.decode() for name, value in sent[0]["headers"] if name == b"x-request-id"]


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    return caplog


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS_LOGGER]


# Taken, replaced or generated


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(b"abc-123", id="plain"),
        pytest.param(b"7", id="one-character"),
        pytest.param(b"x" * 128, id="128-characters"),
        pytest.param(VISIBLE_ASCII[:128], id="every-visible-character"),
        pytest.param(VISIBLE_ASCII[-60:], id="punctuation-and-tilde"),
    ],
)
async def test_an_acceptable_request_id_is_taken_echoed_and_carried(
    given: bytes, access: pytest.LogCaptureFixture
) -> None:
    app = Recorder()

    sent = await call(RequestContext(app), http_scope([(b"x-request-id", given)]))

    assert echoed(sent) == [given.decode()]
    assert app.seen_ids == app.scope_ids == [given.decode()]
    [line] = access_records(access)
    assert line.request_id == given.decode()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"x" * 129, id="129-characters"),
        pytest.param(b"abc def", id="space"),
        pytest.param(b"abc\tdef", id="tab"),
        pytest.param(b"abc\x01def", id="control-character"),
        pytest.param(b"abc\x7fdef", id="delete"),
        pytest.param(b"abc\r\nX-Evil: 1", id="line-break"),
        pytest.param("café".encode(), id="non-ascii-utf8"),
        pytest.param(b"caf\xe9", id="latin-1"),
    ],
)
async def test_an_unacceptable_request_id_is_replaced_by_a_new_one(given: bytes) -> None:
    app = Recorder()

    sent = await call(RequestContext(app), http_scope([(b"x-request-id", given)]))

    [request_id] = echoed(sent)
    assert GENERATED.fullmatch(request_id)
    assert app.seen_ids == [request_id]


async def test_a_request_without_an_id_gets_a_new_one_each_time() -> None:
    middleware = RequestContext(Recorder())

    ids = [echoed(await call(middleware, http_scope()))[0] for _ in range(3)]

    assert all(GENERATED.fullmatch(request_id) for request_id in ids)
    assert len(set(ids)) == 3


async def test_the_first_of_repeated_ids_counts() -> None:
    sent = await call(RequestContext(Recorder()), http_scope([(b"x-request-id", b"first"), (b"x-request-id", b"2")]))

    assert echoed(sent) == ["first"]


async def test_the_id_is_added_to_the_apps_own_headers() -> None:
    sent = await call(RequestContext(Recorder()), http_scope([(b"x-request-id", b"abc")]))

    assert sent[0]["headers"] == [(b"x-app", b"1"), (b"x-request-id", b"abc")]


async def test_the_id_is_current_while_serving_and_reset_after() -> None:
    app = Recorder()

    await call(RequestContext(app), http_scope([(b"x-request-id", b"req-1")]))

    assert app.seen_ids == ["req-1"]  # what every record logged inside carries (tests/test_logs.py)
    assert current_request_id.get() is None


async def test_other_scopes_pass_through_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    lifespan: Scope = {"type": "lifespan", "state": {}}
    await RequestContext(app)(lifespan, None, None)  # type: ignore[arg-type]

    assert seen == [{"type": "lifespan", "state": {}}]


# The access line


async def test_the_access_line_names_method_redacted_path_status_duration_and_no_key(
    access: pytest.LogCaptureFixture,
) -> None:
    scope = http_scope([(b"x-request-id", b"abc")], path="/data/export", query=b"api_key=secret&page=2")

    await call(RequestContext(Recorder(status=404)), scope)

    [line] = access_records(access)
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith('127.0.0.1:5000 - "GET /data/export?api_key=[redacted]&page=2 HTTP/1.1" 404 ')
    fields = {name: getattr(line, name) for name in ("method", "path", "status", "api_key_id", "request_id")}
    assert fields == {
        "method": "GET",
        "path": "/data/export?api_key=[redacted]&page=2",
        "status": 404,
        "api_key_id": None,
        "request_id": "abc",
    }
    assert isinstance(line.duration_ms, float)  # type: ignore[attr-defined]
    assert line.duration_ms >= 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "state",
    [
        pytest.param({"api_key_id": 7}, id="check_request-id"),
        pytest.param({"api_key": SimpleNamespace(id=7)}, id="APIKeyMiddleware-record"),
    ],
)
async def test_the_access_line_names_the_key_the_app_verified(
    state: dict[str, Any], access: pytest.LogCaptureFixture
) -> None:
    await call(RequestContext(Recorder(state=state)), http_scope())

    [line] = access_records(access)
    assert line.api_key_id == 7  # type: ignore[attr-defined]


async def test_a_failing_app_is_logged_as_500_and_its_error_passes_on(access: pytest.LogCaptureFixture) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await call(RequestContext(failing), http_scope())

    [line] = access_records(access)
    assert line.status == 500  # type: ignore[attr-defined]
    assert current_request_id.get() is None


async def test_no_access_line_when_turned_off_or_below_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    await call(RequestContext(Recorder(), access_log=False), http_scope())
    caplog.set_level(logging.WARNING, logger=ACCESS_LOGGER)
    sent = await call(RequestContext(Recorder()), http_scope())

    assert access_records(caplog) == []
    assert len(echoed(sent)) == 1  # the id is still echoed


# In front of keystile's app


@pytest.fixture
async def http(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[httpx.AsyncClient]:
    """keystile's app behind the middleware (outermost, as the app wires it), over a fresh SQLite copy."""
    path = tmp_path / "keystile.db"
    shutil.copyfile(sqlite_template, path)
    app = create_app(make_settings(f"sqlite+aiosqlite:///{path}"), passwords=CHEAP_PASSWORDS)
    if not any(getattr(middleware, "cls", None) is RequestContext for middleware in app.user_middleware):
        app.add_middleware(RequestContext)  # until create_app adds it itself
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
    ):
        yield client


async def test_keystiles_answers_carry_the_id_refusals_by_the_guard_too(http: httpx.AsyncClient) -> None:
    ok = await http.get("/healthz", headers={"X-Request-ID": "probe-1"})
    refused = await http.get("/healthz", headers={"X-Request-ID": "probe-2", "X-Big": "x" * 17_000})
    unknown = await http.get("/nowhere")

    assert (ok.status_code, ok.headers.get_list("x-request-id")) == (200, ["probe-1"])
    assert (refused.status_code, refused.headers.get_list("x-request-id")) == (431, ["probe-2"])
    assert unknown.status_code == 404
    assert GENERATED.fullmatch(unknown.headers["x-request-id"])
