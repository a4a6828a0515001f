"""Prometheus metrics, one registry per keystile instance so that several apps in one process do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.verifications = Counter(
            "keystile_verifications",
            "Key verifications by outcome (VALID, NOT_FOUND, REVOKED, EXPIRED, ...).",
            ["outcome"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "keystile_rate_limited_requests",
            "Requests refused with 429, by reason (rate_limit, quota, key_failures, login_failures).",
            ["reason"],
            registry=self.registry,
        )
        self.limiter_failures = Counter(
            "keystile_rate_limiter_failures",
            "Incidents in which the rate-limit backend (Redis) became unreachable; counted once per incident.",
            registry=self.registry,
        )
        self.verification_seconds = Histogram(
            "keystile_verification_seconds",
            "Time to verify one key, from parsing to the decision.",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
