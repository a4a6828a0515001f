"""Failed-login limits (README, "Rate limits"): per email and per client address, counted only on failure.

A locked email gets 429 before its password is even checked, so guessing stops; a successful login does not reset
the count, so an attacker cannot interleave their own successful logins to keep guessing someone else's password.
"""

from __future__ import annotations

from keystile.instance import Keystile
from keystile.net import IPAddress
from keystile.users.service import normalize_email


def _buckets(keystile: Keystile, email: str, address: IPAddress | None) -> list[tuple[str, int]]:
    settings = keystile.settings
    return [
        (f"login:email:{normalize_email(email)}", settings.login_max_failures_per_email),
        (f"login:ip:{address}", settings.login_max_failures_per_ip),
    ]


async def _spend(keystile: Keystile, email: str, address: IPAddress | None, cost: int) -> int | None:
    """Add `cost` failures to both counters; return seconds to wait when either is used up, else None."""
    window = keystile.settings.login_failure_window_seconds
    wait = None
    for bucket, limit in _buckets(keystile, email, address):
        decision = await keystile.limits.hit(
            bucket, limit=limit, window_seconds=window, cost=cost, now=keystile.clock()
        )
        if decision is not None and (not decision.allowed or decision.remaining == 0):
            wait = max(wait or 0, decision.retry_after)
    return wait


async def seconds_locked(keystile: Keystile, email: str, address: IPAddress | None) -> int | None:
    """Seconds until a login for `email` from `address` may be attempted again, or None when it may now."""
    return await _spend(keystile, email, address, cost=0)


async def record_failure(keystile: Keystile, email: str, address: IPAddress | None) -> None:
    await _spend(keystile, email, address, cost=1)
