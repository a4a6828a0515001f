"""Log lines as KEYSTILE_LOG_FORMAT says (`text` or `json`), and never a key in any of them.

Redaction has two nets: anything shaped like a key (any prefix) wherever it stands in a line, also when percent-encoded
in a query value, and the value of every `api_key` query parameter whatever it holds (a truncated or mistyped key is
still most of a secret). Both formatters run every string of a record through it (message, traceback, fields), so a
key that reaches any logger, not only the access log, is replaced before it is written.

`keystile serve` configures logging with `uvicorn_log_config()`: uvicorn applies that dict in its own process and again
in every worker it spawns, which configuring inside the app factory would not do for uvicorn's own start-up lines.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

LogFormat = Literal["text", "json"]

# Every query parameter; its name is decoded before comparing, because Starlette decodes `api%5Fkey` to `api_key`.
_QUERY_PARAMETER = re.compile(r"([?&;])([^=&#;\s]*)=([^&#;\s]*)")
REDACTED = "[redacted]"
# The key format of keys/format.py for any deployment's prefix; keys are base62 and "_", never percent-encoded.
_KEY_SHAPED = re.compile(r"[a-z][a-z0-9_]{0,15}_[0-9A-Za-z]{12}_[0-9A-Za-z]{49}(?![0-9A-Za-z])")

ACCESS_LOGGER = "keystile.access"
# The fields an access line adds to the JSON object (docs/DESIGN.md, "Logs"); a field that is None is left out.
ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "api_key_id")

current_request_id: ContextVar[str | None] = ContextVar("keystile_request_id", default=None)
"""The id of the request being served in this context, set by `keystile.request_id.RequestContext`: every record
logged while a request is served carries it, whichever logger wrote it."""


def _redact_parameter(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    if unquote_plus(name).lower() == "api_key" or ("%" in value and _KEY_SHAPED.search(unquote_plus(value))):
        value = REDACTED
    return f"{separator}{name}={value}"


def redact(text: str) -> str:
    """`text` with every key-shaped string, and the value of every `api_key` query parameter (however its name is
    encoded), replaced."""
    # Parameters first: a %-encoded key is then replaced whole, not from its first plain letter on.
    return _KEY_SHAPED.sub(REDACTED, _QUERY_PARAMETER.sub(_redact_parameter, text))


class RedactQueryKeys(logging.Filter):
    """For uvicorn's own access log, whose records are formatted by whatever handler the embedding app installed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_redaction(logger_name: str = "uvicorn.access") -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(existing, RedactQueryKeys) for existing in logger.filters):
        logger.addFilter(RedactQueryKeys())


def _request_id(record: logging.LogRecord) -> str | None:
    """The id an access line names explicitly, else that of the request being served when the record was logged
    (formatting runs in the logging call's context: handlers are called synchronously)."""
    explicit = getattr(record, "request_id", None)
    return explicit if isinstance(explicit, str) else current_request_id.get()


def _utc_time(created: float) -> str:
    """`2026-01-31T12:00:00.123Z`: ISO 8601 in UTC, whatever the server's time zone."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: `time` (ISO 8601, UTC), `level`, `logger`, `message`, `request_id`
    (null outside a request), the access fields when the record has them, and `exception` (the traceback as one
    string) when there is one. Strings are redacted; `ensure_ascii` keeps U+2028 and friends from splitting a line."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = _request_id(record)
        entry: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": None if request_id is None else redact(request_id),
        }
        for name in ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """uvicorn's line (`INFO:     message`), redacted, with ` request_id=...` when a request is being served and the
    traceback, if any, on the lines below."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname + ':':<9} {record.getMessage()}"
        request_id = _request_id(record)
        if request_id is not None:
            line = f"{line} request_id={request_id}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return redact(line)


_FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def uvicorn_log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict for `uvicorn.run(log_config=...)`: one handler on the root logger (stderr,
    `log_format`), so uvicorn's, keystile's and any library's records come out alike; uvicorn and keystile at
    `level`, everything else from WARNING. uvicorn's access logger is silenced by `access_log=False`: keystile writes
    its own access line (`keystile.access`), which knows the duration, the request id and the key."""
    formatter = _FORMATTERS[log_format]
    named = ("uvicorn", "uvicorn.error", "uvicorn.access", "keystile")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"keystile": {"()": f"{__name__}.{formatter.__qualname__}"}},
        "handlers": {
            "keystile": {"class": "logging.StreamHandler", "formatter": "keystile", "stream": "ext://sys.stderr"}
        },
        "loggers": {name: {"level": level.upper(), "handlers": [], "propagate": True} for name in named},
        "root": {"level": "WARNING", "handlers": ["keystile"]},
    }


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Apply `uvicorn_log_config` in this process (for an app served without `keystile serve`)."""
    logging.config.dictConfig(uvicorn_log_config(level, log_format))
