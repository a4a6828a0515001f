"""What happens around a limiter decision: RATE_LIMIT_FAILURE, once-per-incident logging, and recovery.

While the backend is failing, it is retried at most once per `RETRY_INTERVAL_SECONDS` (a request in between gets the
configured failure mode at once instead of waiting for a timeout), so limiting resumes without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, Literal, TypeVar

from keystile.metrics import Metrics
from keystile.ratelimit.base import Counter, Decision, LimiterUnavailableError, RateLimiter

T = TypeVar("T")

logger = logging.getLogger(__name__)

RETRY_INTERVAL_SECONDS = 1.0


class LimiterClosedError(Exception):
    """The backend is down and RATE_LIMIT_FAILURE=closed: the request must be refused (503)."""


class LimiterGuard:
    def __init__(
        self,
        limiter: RateLimiter,
        *,
        failure_mode: Literal["open", "closed"],
        metrics: Metrics,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._failure_mode = failure_mode
        self._metrics = metrics
        self._monotonic = monotonic
        self._failing_since: float | None = None
        self._next_attempt = 0.0

    async def hit(self, bucket: str, *, limit: int, window_seconds: int, cost: int, now: datetime) -> Decision | None:
        """The decision, or None when the backend is down and the failure mode is open."""
        return await self._decide(
            self._limiter.hit(bucket, limit=limit, window_seconds=window_seconds, cost=cost, now=now)
        )

    async def hit_all(self, counters: list[Counter], *, cost: int, now: datetime) -> list[Decision] | None:
        """Decisions on counters passed together (RateLimiter.hit_all), or None as for `hit`."""
        return await self._decide(self._limiter.hit_all(counters, cost=cost, now=now))

    async def _decide(self, decision: Coroutine[Any, Any, T]) -> T | None:
        if self._failing_since is not None and self._monotonic() < self._next_attempt:
            decision.close()  # not awaited: the backend is not asked again before the retry interval
            self._fail_if_closed()
            return None
        try:
            decided = await decision
        except LimiterUnavailableError as error:
            if self._failing_since is None:
                self._failing_since = self._monotonic()
                self._metrics.limiter_failures.inc()
                logger.error("rate limiter backend unreachable, failing %s: %s", self._failure_mode, error)
            self._next_attempt = self._monotonic() + RETRY_INTERVAL_SECONDS
            self._fail_if_closed()
            return None
        if self._failing_since is not None:
            logger.warning("rate limiter backend is back after %.1fs", self._monotonic() - self._failing_since)
            self._failing_since = None
        return decided

    async def ping(self) -> bool:
        """Whether the backend answers now (for readiness), whatever the last decision saw."""
        return await self._limiter.ping()

    async def close(self) -> None:
        await self._limiter.close()

    def _fail_if_closed(self) -> None:
        if self._failure_mode == "closed":
            raise LimiterClosedError
