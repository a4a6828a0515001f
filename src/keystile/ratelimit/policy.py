"""`RateLimitPolicy`: so many requests per window, the one type from settings to JSON to database columns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_LIMIT = 1_000_000_000
MAX_WINDOW_SECONDS = 31_536_000  # one year


class RateLimitPolicy(BaseModel):
    """Validated like any model in request bodies and settings; built and taken apart positionally, like a tuple, by
    SQLAlchemy's `composite()` over the two columns that store it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(ge=1, le=MAX_LIMIT, strict=True, description="requests admitted per window")
    window_seconds: int = Field(ge=1, le=MAX_WINDOW_SECONDS, strict=True, description="the window's length")

    @classmethod
    def of(cls, limit: int | None, window_seconds: int | None) -> RateLimitPolicy | None:
        """From the two columns; None when the key has no policy of its own (both are NULL)."""
        if limit is None or window_seconds is None:
            return None
        return cls(limit=limit, window_seconds=window_seconds)

    def __composite_values__(self) -> tuple[int, int]:
        return self.limit, self.window_seconds

    @classmethod
    def parse(cls, text: str) -> RateLimitPolicy:
        """`<requests>/<seconds>`, as settings and the CLI write it (`100/60`)."""
        requests, sep, seconds = text.strip().partition("/")
        if not sep or not requests.isdigit() or not seconds.isdigit():
            raise ValueError(f"expected '<requests>/<seconds>', e.g. '100/60', got {text!r}")
        limit, window_seconds = int(requests), int(seconds)
        if not 1 <= limit <= MAX_LIMIT or not 1 <= window_seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(f"requests must be 1..{MAX_LIMIT} and seconds 1..{MAX_WINDOW_SECONDS}")
        return cls(limit=limit, window_seconds=window_seconds)

    @classmethod
    def from_text(cls, value: Any) -> Any:
        """A pydantic before-validator: parse `<requests>/<seconds>` text, pass anything else on."""
        if isinstance(value, str):
            return cls.parse(value) if value.strip() else None
        return value

    def __str__(self) -> str:
        return f"{self.limit}/{self.window_seconds}"
