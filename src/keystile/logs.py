"""Keep keys out of logs: uvicorn's access log prints the full path, query string included."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

# Every query parameter; its name is decoded before comparing, because Starlette decodes `api%5Fkey` to `api_key`.
_QUERY_PARAMETER = re.compile(r"([?&;])([^=&#;\s]*)=([^&#;\s]*)")
REDACTED = "[redacted]"


def _redact_parameter(match: re.Match[str]) -> str:
    separator, name, value = match.groups()
    if unquote_plus(name).lower() == "api_key":
        value = REDACTED
    return f"{separator}{name}={value}"


def redact(text: str) -> str:
    """`text` with the value of every `api_key` query parameter (however its name is encoded) replaced."""
    return _QUERY_PARAMETER.sub(_redact_parameter, text)


class RedactQueryKeys(logging.Filter):
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
