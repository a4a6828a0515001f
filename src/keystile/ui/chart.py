"""A usage chart as SVG shapes computed here and drawn by a template: no script, no inline style (the CSP allows
neither), so it shows without JavaScript. Bars stack admitted verifications under refused ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keystile.usage.schemas import Interval, UsageBucket

WIDTH = 720
HEIGHT = 180
AXIS = 20  # room under the bars for the first and last labels
GAP = 2


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # "valid" or "refused": a CSS class
    label: str  # the bucket and its count, for screen readers and hover


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    bars: list[Bar]
    peak: int
    total_valid: int
    total_refused: int
    first_label: str
    last_label: str
    width: int = WIDTH
    height: int = HEIGHT
    axis_y: int = HEIGHT - AXIS + 14


def _refused(bucket: UsageBucket) -> int:
    return bucket.rate_limited + bucket.quota_exceeded + bucket.rejected


def _when(bucket: UsageBucket, interval: Interval) -> str:
    return bucket.start.strftime("%H:00" if interval == "hour" else "%b %d")


def build(title: str, interval: Interval, buckets: Sequence[UsageBucket]) -> Chart:
    plot = HEIGHT - AXIS
    peak = max((bucket.valid + _refused(bucket) for bucket in buckets), default=0)
    slot = WIDTH / max(len(buckets), 1)
    bars: list[Bar] = []
    for index, bucket in enumerate(buckets):
        x = index * slot + GAP / 2
        base = float(plot)
        when = _when(bucket, interval)
        for kind, count in (("valid", bucket.valid), ("refused", _refused(bucket))):
            if count == 0 or peak == 0:
                continue
            height = max(plot * count / peak, 1.0)
            base -= height
            bars.append(
                Bar(
                    round(x, 2), round(base, 2), round(slot - GAP, 2), round(height, 2), kind, f"{when}: {count} {kind}"
                )
            )
    return Chart(
        title=title,
        bars=bars,
        peak=peak,
        total_valid=sum(bucket.valid for bucket in buckets),
        total_refused=sum(_refused(bucket) for bucket in buckets),
        first_label=_when(buckets[0], interval) if buckets else "",
        last_label=_when(buckets[-1], interval) if buckets else "",
    )
