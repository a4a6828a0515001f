"""Keep keys out of logs: uvicorn's access log prints the full path, query string included."""

from __future__ import annotations

import logging
import re

# The query parameter that may carry a key (API.md section 2), in any case, up to the next separator.
_QUERY_KEY = re.compile(r"(?i)([?&]api_key=)[^&#\s]*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _QUERY_KEY.sub(rf"\g<1>{REDACTED}", text)


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
