"""A mergeable latency histogram with logarithmic buckets (DDSketch's mapping).

Bucket ``i`` holds values in ``(gamma**(i-1), gamma**i]`` with ``gamma = (1+a)/(1-a)``, so
every quantile is answered within a relative error ``a`` (1 %). Merging two histograms
adds their bucket counts: the merged quantile is the quantile of all the values that went
into either, which averaging percentiles never is. Why our own and not the ``ddsketch``
package: sixty lines, no protobuf dependency, and a compact JSON form for the broker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(GAMMA)
MIN_VALUE = 1e-4  # seconds; anything faster counts as this (a tenth of a millisecond)


def bucket_of(value: float) -> int:
    return math.ceil(math.log(max(value, MIN_VALUE)) / _LOG_GAMMA)


def bucket_bounds(index: int) -> tuple[float, float]:
    """The values bucket ``index`` holds: ``(lower, upper]``."""
    return GAMMA ** (index - 1), GAMMA**index


def bucket_value(index: int) -> float:
    """The value a bucket answers with: within RELATIVE_ACCURACY of all it holds."""
    return 2 * GAMMA**index / (GAMMA + 1)


class LatencySketch:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0  # the sum of the values (Prometheus' _sum)

    def add(self, value: float) -> None:
        index = bucket_of(value)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += value

    def merge(self, other: LatencySketch) -> LatencySketch:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        return self

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile (``q`` in 0..1); None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """Several nearest-rank quantiles (ascending ``qs``) in one pass over the buckets."""
        if not self.count:
            return [None] * len(qs)
        ranks = [max(1, math.ceil(q * self.count)) for q in qs]
        answers: list[float | None] = []
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            while len(answers) < len(ranks) and seen >= ranks[len(answers)]:
                answers.append(bucket_value(index))
            if len(answers) == len(ranks):
                break
        top = bucket_value(max(self.buckets))  # counts that do not add up: the largest
        return answers + [top] * (len(ranks) - len(answers))

    def cumulative(self, bounds: Iterable[float]) -> list[int]:
        """How many values are at most each bound (Prometheus' ``le`` buckets); a bucket
        counts under the first bound at or above its answer value."""
        ordered = sorted(self.buckets.items())
        counts = []
        for bound in bounds:
            counts.append(sum(n for index, n in ordered if bucket_value(index) <= bound))
        return counts

    def to_json(self) -> dict[str, Any]:
        return {"n": self.count, "s": round(self.total, 6), "b": self.buckets}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencySketch:
        sketch = cls()
        sketch.buckets = {int(i): int(n) for i, n in data.get("b", {}).items()}
        sketch.count = int(data.get("n", 0))
        sketch.total = float(data.get("s", 0.0))
        return sketch

    @classmethod
    def merged(cls, sketches: Iterable[LatencySketch]) -> LatencySketch:
        result = cls()
        for sketch in sketches:
            result.merge(sketch)
        return result
