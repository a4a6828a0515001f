"""Prometheus metrics, one registry per keystile instance so that several apps in one process do not collide.

The two metrics updated on every verification are plain integers behind a custom collector: prometheus-client's own
Counter and Histogram take a lock per update, which costs more than the rest of a cached verification. All updates
happen on the event loop's thread, so no lock is needed; prometheus-client still renders the exposition format.

Under `keystile serve --workers N` each worker counts only the requests it serves, yet a scrape reaches one worker:
its /metrics must answer the totals over all of them. prometheus-client's multiprocess mode cannot carry the custom
collector, and would add an mmap write on every update. Instead, while `shared`, each worker writes a snapshot of its
cumulative samples to a file of its own in a directory that `keystile serve` makes for the run (every second when
something changed, and once more as the worker stops), and `render` adds every other worker's snapshot to its own
live figures. The hot path stays an integer increment; the totals lag by at most a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import tempfile
from bisect import bisect_left
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)

# Set by `keystile serve --workers N` (N > 1) for its workers: where their snapshots go. Internal, not a setting.
WORKER_METRICS_DIR = "_KEYSTILE_WORKER_METRICS_DIR"
SHARE_SECONDS = 1.0


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
        self._workers: _WorkerFiles | None = None

    def render(self) -> bytes:
        """The exposition format: this process's figures or, while `shared`, the totals over every worker."""
        if self._workers is None:
            return generate_latest(self.registry)
        totals = CollectorRegistry()
        totals.register(_Families(self._workers.totals(list(self.registry.collect()))))
        return generate_latest(totals)

    @contextlib.asynccontextmanager
    async def shared(self, directory: Path, every: float = SHARE_SECONDS) -> AsyncIterator[None]:
        """Inside, this process is one worker of several meeting in `directory`: its snapshot is kept there and
        `render` answers the totals. The last snapshot is written on the way out and stays, so the totals never go
        down when a worker stops or is replaced."""
        files = _WorkerFiles(directory)
        files.write(self.registry.collect())
        self._workers = files
        task = asyncio.create_task(self._write_periodically(files, every))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._workers = None
            files.write(self.registry.collect())

    async def _write_periodically(self, files: _WorkerFiles, every: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(every)
            try:
                files.write(self.registry.collect())
            except OSError as error:
                if not failing:  # once per incident, not every second
                    logger.warning("cannot write this worker's metrics to %s: %s", files.directory, error)
                failing = True
            else:
                failing = False


# One worker's cumulative samples, by family name: [(sample name, labels, value), ...] (lists once read from JSON).
Snapshot = dict[str, list[tuple[str, dict[str, str], float]]]


def _snapshot(families: Iterable[Metric]) -> Snapshot:
    """Every sample that adds up across workers. Every metric here is a counter or a histogram, so each sample is a
    total, except `_created`: one process's start time, meaningless summed (prometheus-client's multiprocess mode
    drops it too)."""
    return {
        family.name: [(s.name, s.labels, s.value) for s in family.samples if not s.name.endswith("_created")]
        for family in families
    }


class _WorkerFiles:
    """This worker's snapshot file in `directory`, and the sum of everyone's.

    The file name carries the pid, to tell workers apart by eye, and a random part: a later worker that is given a
    dead one's pid writes a file of its own instead of replacing (and so losing) the dead one's counts.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.own = directory / f"worker-{os.getpid()}-{secrets.token_hex(4)}.json"
        self._written = b""

    def write(self, families: Iterable[Metric]) -> None:
        data = json.dumps(_snapshot(families)).encode()
        if data == self._written:  # an idle worker touches no file
            return
        # Written aside, then renamed over the old one: a reader sees one whole snapshot or the other.
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".writing-")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, self.own)
        self._written = data

    def totals(self, live: list[Metric]) -> list[Metric]:
        """`live` (this worker's families, collected now) with every other worker's last snapshot added in."""
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {family.name: {} for family in live}
        for snapshot in (_snapshot(live), *self._others()):
            for family_name, samples in snapshot.items():
                into = sums.get(family_name)
                if into is None:
                    continue
                for name, labels, value in samples:
                    key = (name, tuple(sorted(labels.items())))
                    into[key] = into.get(key, 0.0) + value
        families = []
        for family in live:
            total = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, label_pairs), value in sums[family.name].items():
                total.add_sample(name, dict(label_pairs), value)
            families.append(total)
        return families

    def _others(self) -> Iterator[Snapshot]:
        for path in self.directory.glob("worker-*.json"):
            if path == self.own:
                continue
            try:
                snapshot: Snapshot = json.loads(path.read_bytes())
            except (FileNotFoundError, ValueError):  # the directory is being removed: the server is stopping
                continue
            yield snapshot


class _Families(Collector):
    """Families computed beforehand, in a form `generate_latest` takes."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


@contextlib.contextmanager
def worker_directory(workers: int) -> Iterator[None]:
    """For `keystile serve`: with more than one worker, a fresh directory for their snapshots, named in the
    environment they inherit, and removed with its files once they have all stopped (so every run starts from zero,
    as a single process does). One worker needs none: its /metrics is the process's own."""
    if workers == 1:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="keystile-metrics-") as directory:
        os.environ[WORKER_METRICS_DIR] = directory
        try:
            yield
        finally:
            del os.environ[WORKER_METRICS_DIR]
