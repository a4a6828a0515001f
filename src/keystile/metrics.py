"""Prometheus metrics, one registry per keystile instance so that several apps in one process do not collide.

The two metrics updated on every verification are plain integers behind a custom collector: prometheus-client's own
Counter and Histogram take a lock per update, which costs more than the rest of a cached verification. All updates
happen on the event loop's thread, so no lock is needed; prometheus-client still renders the exposition format.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)


class _HotPathCollector(Collector):
    def __init__(self) -> None:
        self.outcomes: defaultdict[str, int] = defaultdict(int)
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def record(self, outcome: str, seconds: float | None = None) -> None:
        self.outcomes[outcome] += 1
        if seconds is not None:
            self.bucket_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        verifications = CounterMetricFamily(
            "keystile_verifications", "Key verifications by outcome (VALID, NOT_FOUND, ...).", labels=["outcome"]
        )
        for outcome, count in sorted(self.outcomes.items()):
            verifications.add_metric([outcome], count)
        yield verifications
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.bucket_counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "keystile_verification_seconds",
            "Time to verify one well-formed key, from lookup to the decision (malformed keys are counted, not timed).",
            buckets=buckets,
            sum_value=self.latency_sum,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._hot_path = _HotPathCollector()
        self.registry.register(self._hot_path)
        # verified(outcome, seconds=None): count a verification and time it. The collector's own method, bound once,
        # so the hot path makes one call instead of two.
        self.verified = self._hot_path.record
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
