"""keystile.logs: any key-shaped string, and the value of every `api_key` query parameter however the name is
written, is redacted from every log line; everything else in the line stays as it was. KEYSTILE_LOG_FORMAT=json is one
object per line with the contract's fields; text reads like uvicorn's; both redact, whichever logger wrote the line."""

from __future__ import annotations

import io
import json
import logging
import pickle
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from keystile.app import create_app
from keystile.clock import FakeClock
from keystile.keys.format import generate_key
from keystile.logs import (
    ACCESS_LOGGER,
    REDACTED,
    JsonFormatter,
    LogFormat,
    RedactQueryKeys,
    TextFormatter,
    configure_logging,
    current_request_id,
    install_redaction,
    redact,
    uvicorn_log_config,
)
from keystile.request_id import RequestContext
from keystile.settings import Settings
from tests.conftest import TEST_SECRET_KEY, make_settings
from tests.helpers import CHEAP_PASSWORDS, EXPORT, KeystileClient, create_key, user_headers

# redact


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            "GET /data/export?api_key=ks_SECRET HTTP/1.1",
            f"GET /data/export?api_key={REDACTED} HTTP/1.1",
            id="only-parameter",
        ),
        pytest.param(
            "/data/export?name=x&api_key=ks_SECRET&page=2",
            f"/data/export?name=x&api_key={REDACTED}&page=2",
            id="between-parameters",
        ),
        pytest.param("/data/export?API_KEY=ks_SECRET", f"/data/export?API_KEY={REDACTED}", id="upper-case-name"),
        pytest.param(
            "/data/export?api_key=ks_SECRET#fragment", f"/data/export?api_key={REDACTED}#fragment", id="fragment"
        ),
        pytest.param(
            "/a?api_key=ks_SECRET&api_key=ks_SECRET2",
            f"/a?api_key={REDACTED}&api_key={REDACTED}",
            id="repeated",
        ),
        pytest.param("/data/export?api_key=", f"/data/export?api_key={REDACTED}", id="empty-value"),
        pytest.param("/data/export?name=api_key", "/data/export?name=api_key", id="name-as-a-value-untouched"),
        pytest.param("/healthz", "/healthz", id="no-query"),
    ],
)
def test_redact_removes_api_key_query_values(line: str, expected: str) -> None:
    assert redact(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("GET /data/export?api%5Fkey=ks_SECRET HTTP/1.1", id="encoded-underscore"),
        pytest.param("GET /data/export?%61pi_key=ks_SECRET HTTP/1.1", id="encoded-letter"),
    ],
)
def test_redact_removes_api_key_values_under_a_percent_encoded_name(line: str) -> None:
    assert "ks_SECRET" not in redact(line)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("/x?api%5Fkey=ks_SECRET", f"/x?api%5Fkey={REDACTED}", id="encoded-underscore-name-kept"),
        pytest.param("/x?API%5fKEY=ks_SECRET", f"/x?API%5fKEY={REDACTED}", id="encoded-upper-case"),
        pytest.param("/x?%61%70%69%5F%6B%65%79=ks_SECRET", f"/x?%61%70%69%5F%6B%65%79={REDACTED}", id="all-encoded"),
        pytest.param("/x?a=1;api_key=ks_SECRET;b=2", f"/x?a=1;api_key={REDACTED};b=2", id="semicolon-separators"),
        pytest.param(
            "/x?page=2&api%5Fkey=ks_SECRET&name=api_key",
            f"/x?page=2&api%5Fkey={REDACTED}&name=api_key",
            id="other-parameters-untouched",
        ),
    ],
)
def test_redact_replaces_the_value_under_an_encoded_name_and_keeps_the_rest_of_the_line(
    line: str, expected: str
) -> None:
    assert redact(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("/x?api_key_id=42&page=2", id="longer-name"),
        pytest.param("/x?xapi_key=42", id="name-with-a-prefix"),
        pytest.param("/x?key=42&api=7", id="neighbouring-names"),
        pytest.param("/x?api%5Fkeys=42", id="encoded-longer-name"),
        pytest.param("/x/api_key=42", id="in-the-path-not-the-query"),
    ],
)
def test_redact_leaves_parameters_that_are_not_api_key_alone(line: str) -> None:
    assert redact(line) == line


# The access log filter


def test_the_access_log_filter_redacts_uvicorn_style_arguments() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/data/export?api_key=ks_SECRET", "1.1", 401),
        None,
    )

    assert RedactQueryKeys().filter(record) is True

    assert "ks_SECRET" not in record.getMessage()
    assert record.getMessage() == f'127.0.0.1:5000 - "GET /data/export?api_key={REDACTED} HTTP/1.1" 401'


def test_the_access_log_filter_redacts_a_preformatted_message() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "GET /x?api_key=ks_SECRET", None, None)

    RedactQueryKeys().filter(record)

    assert record.getMessage() == f"GET /x?api_key={REDACTED}"


def test_the_filter_leaves_arguments_that_are_not_strings_as_they_were() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, "%s %d %r", ("/x?api_key=ks_SECRET", 401, None), None
    )

    RedactQueryKeys().filter(record)

    assert record.args == (f"/x?api_key={REDACTED}", 401, None)


# install_redaction


def test_create_app_installs_the_redaction_filter_on_the_access_log_once(caplog: pytest.LogCaptureFixture) -> None:
    create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", secret_key=TEST_SECRET_KEY))
    install_redaction()
    access = logging.getLogger("uvicorn.access")
    caplog.set_level(logging.INFO, logger="uvicorn.access")

    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/data/export?api_key=ks_SECRET", "1.1", 200)

    assert sum(isinstance(existing, RedactQueryKeys) for existing in access.filters) == 1
    assert "ks_SECRET" not in caplog.text
    assert REDACTED in caplog.text


@pytest.fixture
def scratch_logger() -> Iterator[logging.Logger]:
    """A logger of this test's own, without the redaction filter once the test is over."""
    logger = logging.getLogger("keystile.tests.redaction")
    yield logger
    for existing in list(logger.filters):
        logger.removeFilter(existing)


def test_install_redaction_adds_one_filter_to_the_named_logger_however_often_it_is_called(
    scratch_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    install_redaction(scratch_logger.name)
    install_redaction(scratch_logger.name)
    caplog.set_level(logging.INFO, logger=scratch_logger.name)

    scratch_logger.info("%s %s", "GET", "/x?page=2&api_key=ks_SECRET")

    assert sum(isinstance(existing, RedactQueryKeys) for existing in scratch_logger.filters) == 1
    assert [record.getMessage() for record in caplog.records] == [f"GET /x?page=2&api_key={REDACTED}"]


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("GET /data/export?apikey={key} HTTP/1.1", id="apikey-parameter"),
        pytest.param("GET /data/export?key={key}&page=2 HTTP/1.1", id="key-parameter"),
        pytest.param("GET /data/export?x={key} HTTP/1.1", id="any-parameter"),
        pytest.param("GET /keys/{key} HTTP/1.1", id="in-the-path"),
        pytest.param("GET /a/{key}/b HTTP/1.1", id="path-segment"),
    ],
)
@pytest.mark.parametrize("prefix", ["ks", "ks_live"])
def test_redact_removes_a_key_wherever_it_stands_in_a_logged_url(template: str, prefix: str) -> None:
    key = generate_key(prefix).raw

    redacted = redact(template.format(key=key))

    assert key not in redacted
    assert key.split("_")[-1] not in redacted  # not even the secret part
    assert redacted == template.format(key=REDACTED)


def test_redact_removes_a_percent_encoded_key_from_any_query_value() -> None:
    key = generate_key("ks").raw
    encoded = "%" + key[:1].encode().hex() + key[1:]  # the first letter written %6B...

    redacted = redact(f"GET /x?page=2&q={encoded}&name=api HTTP/1.1")

    assert redacted == f"GET /x?page=2&q={REDACTED}&name=api HTTP/1.1"


# The formatters


def record_of(message: str, *args: object, exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("keystile.tests", logging.WARNING, __file__, 1, message, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_the_fields_of_the_contract() -> None:
    record = record_of("cache %s", "cleared")
    record.created = 1_767_225_600.25  # 2026-01-01T00:00:00.25Z

    entry = json.loads(JsonFormatter().format(record))

    assert entry == {
        "time": "2026-01-01T00:00:00.250Z",
        "level": "warning",
        "logger": "keystile.tests",
        "message": "cache cleared",
        "request_id": None,
    }


def test_a_json_line_takes_the_request_id_of_the_request_being_served() -> None:
    token = current_request_id.set("req-7")
    try:
        line = JsonFormatter().format(record_of("inside"))
    finally:
        current_request_id.reset(token)

    assert json.loads(line)["request_id"] == "req-7"


def test_a_json_access_line_adds_its_fields_and_leaves_out_an_unknown_key() -> None:
    record = record_of(
        "GET /x",
        request_id="abc",
        method="GET",
        path="/x?api_key=ks_SECRET",
        status=401,
        duration_ms=1.5,
        api_key_id=None,
    )

    entry = json.loads(JsonFormatter().format(record))

    assert {name: entry.get(name) for name in ("request_id", "method", "path", "status", "duration_ms")} == {
        "request_id": "abc",
        "method": "GET",
        "path": f"/x?api_key={REDACTED}",
        "status": 401,
        "duration_ms": 1.5,
    }
    assert "api_key_id" not in entry


def test_a_json_line_is_one_line_with_the_traceback_as_a_redacted_string() -> None:
    key = generate_key("ks").raw
    try:
        raise ValueError(f"bad key\n{key}")
    except ValueError:
        exc_info = sys.exc_info()

    line = JsonFormatter().format(record_of("failed on\n%s\u2028", key, exc_info=exc_info))

    assert len(line.splitlines()) == 1
    entry = json.loads(line)
    assert entry["message"] == f"failed on\n{REDACTED}\u2028"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert f"ValueError: bad key\n{REDACTED}" in entry["exception"]
    assert key not in line


def test_a_text_line_reads_like_uvicorns_and_is_redacted() -> None:
    key = generate_key("ks").raw
    token = current_request_id.set("req-7")
    try:
        line = TextFormatter().format(record_of("GET /keys/%s?api_key=x", key))
    finally:
        current_request_id.reset(token)

    assert line == f"WARNING:  GET /keys/{REDACTED}?api_key={REDACTED} request_id=req-7"
    assert TextFormatter().format(record_of("started")) == "WARNING:  started"


# Served: every line of a running app, in either format


@pytest.fixture
def log_output() -> Iterator[Callable[[LogFormat], io.StringIO]]:
    """`use(format)`: from now on every record of any logger (keystile.access from INFO) goes to the returned buffer
    in that format; undone after the test."""
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    handlers: list[logging.Handler] = []
    access_level = access.level

    def use(log_format: LogFormat) -> io.StringIO:
        buffer = io.StringIO()
        handler = logging.StreamHandler(buffer)
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
        root.addHandler(handler)
        handlers.append(handler)
        access.setLevel(logging.INFO)
        return buffer

    yield use
    for handler in handlers:
        root.removeHandler(handler)
    access.setLevel(access_level)


@pytest.fixture
async def served(database_url: str, clock: FakeClock) -> AsyncIterator[KeystileClient]:
    """keystile's app (query keys accepted) with the request-id middleware outermost, as `create_app` wires it."""
    app = create_app(make_settings(database_url, accept_query_key=True), clock=clock, passwords=CHEAP_PASSWORDS)
    if not any(getattr(middleware, "cls", None) is RequestContext for middleware in app.user_middleware):
        app.add_middleware(RequestContext)  # until create_app adds it itself
    async with app.router.lifespan_context(app):
        client = KeystileClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        client.keystile = app.state.keystile
        async with client:
            yield client


async def requests_carrying(client: KeystileClient, key: str) -> list[httpx.Response]:
    """The key in a path, in `api_key` and in another query parameter (also %-encoded), and in the header."""
    encoded = "%" + key[:1].encode().hex() + key[1:]
    return [
        await client.get(f"/keys/{key}"),
        await client.get(f"{EXPORT}?api_key={key}", headers={"X-Request-ID": "by-query"}),
        await client.get(f"{EXPORT}?page=1&q={key}"),
        await client.get(f"{EXPORT}?q={encoded}"),
        await client.get(EXPORT, headers={"X-API-Key": key, "X-Request-ID": "by-header"}),
    ]


def assert_no_key_material(output: str, key: str) -> None:
    _prefix, key_id, secret = key.split("_")
    assert key not in output
    assert secret not in output
    assert key_id not in output


async def test_json_logs_are_one_object_a_line_with_no_key_anywhere(
    served: KeystileClient, log_output: Callable[[LogFormat], io.StringIO]
) -> None:
    created = await create_key(served, await user_headers(served))
    output = log_output("json")

    responses = await requests_carrying(served, created["key"])

    lines = [json.loads(line) for line in output.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == ACCESS_LOGGER]
    assert [line["request_id"] for line in access] == [response.headers["x-request-id"] for response in responses]
    assert [(line["method"], line["status"]) for line in access] == [("GET", r.status_code) for r in responses]
    assert [line["path"] for line in access] == [
        f"/keys/{REDACTED}",
        f"{EXPORT}?api_key={REDACTED}",
        f"{EXPORT}?page=1&q={REDACTED}",
        f"{EXPORT}?q={REDACTED}",
        EXPORT,
    ]
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id"} <= set(line)
    for line in access:
        assert isinstance(line["duration_ms"], float)
    assert access[1]["request_id"] == "by-query"
    assert responses[1].status_code == 200
    assert_no_key_material(output.getvalue(), created["key"])


async def test_the_json_access_line_names_the_key_the_dependency_verified(
    served: KeystileClient, log_output: Callable[[LogFormat], io.StringIO]
) -> None:
    created = await create_key(served, await user_headers(served))
    output = log_output("json")

    response = await served.get(EXPORT, headers={"X-API-Key": created["key"]})

    [line] = [json.loads(line) for line in output.getvalue().splitlines() if ACCESS_LOGGER in line]
    assert response.status_code == 200
    assert line["api_key_id"] == created["id"]


async def test_text_logs_carry_no_key_either(
    served: KeystileClient, log_output: Callable[[LogFormat], io.StringIO]
) -> None:
    created = await create_key(served, await user_headers(served))
    output = log_output("text")

    responses = await requests_carrying(served, created["key"])

    lines = output.getvalue().splitlines()
    assert len(lines) == len(responses)
    assert lines[1].startswith(f'INFO:     127.0.0.1:123 - "GET {EXPORT}?api_key={REDACTED} HTTP/1.1" 200 ')
    assert lines[1].endswith("ms request_id=by-query")
    assert_no_key_material(output.getvalue(), created["key"])


# What `keystile serve` gives uvicorn


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put back what `dictConfig` replaces: the handlers, levels and propagation of root and the named loggers."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "keystile"]
    loggers = [logging.getLogger(name or None) for name in names]
    saved = [(logger.handlers[:], logger.level, logger.propagate, logger.disabled) for logger in loggers]
    yield
    for logger, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


@pytest.mark.usefixtures("restored_logging")
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_the_uvicorn_log_config_sends_every_logger_through_one_redacting_formatter(
    log_format: LogFormat, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_key("ks").raw
    config = uvicorn_log_config("info", log_format)
    pickle.dumps(config)  # uvicorn hands it to each worker process

    configure_logging("info", log_format)
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:8000")
    logging.getLogger("keystile.db").warning("lost %s", key)
    logging.getLogger("keystile.access").info("GET /x?api_key=%s", key)
    logging.getLogger("keystile.db").debug("not at info")
    logging.getLogger("sqlalchemy.pool").info("not below warning for libraries")
    logging.getLogger("sqlalchemy.pool").warning("library warning")

    lines = capsys.readouterr().err.splitlines()
    assert key not in "".join(lines)
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        assert [(entry["logger"], entry["level"], entry["message"]) for entry in entries] == [
            ("uvicorn.error", "info", "Uvicorn running on http://127.0.0.1:8000"),
            ("keystile.db", "warning", f"lost {REDACTED}"),
            ("keystile.access", "info", f"GET /x?api_key={REDACTED}"),
            ("sqlalchemy.pool", "warning", "library warning"),
        ]
    else:
        assert lines == [
            "INFO:     Uvicorn running on http://127.0.0.1:8000",
            f"WARNING:  lost {REDACTED}",
            f"INFO:     GET /x?api_key={REDACTED}",
            "WARNING:  library warning",
        ]
