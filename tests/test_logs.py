"""keystile.logs: the value of every `api_key` query parameter is redacted from the access log, however the name is
written; everything else in the line stays as it was."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from keystile.app import create_app
from keystile.logs import REDACTED, RedactQueryKeys, install_redaction, redact
from keystile.settings import Settings
from tests.conftest import TEST_SECRET_KEY

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
