"""The latency sketch: within its relative accuracy, and merging is exact."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from emailq.monitor.sketch import RELATIVE_ACCURACY, LatencySketch, bucket_bounds, bucket_of
from emailq.percentiles import percentile

latencies = st.lists(st.floats(min_value=1e-3, max_value=3600), min_size=1, max_size=300)


@given(latencies, st.sampled_from([0.5, 0.95, 0.99]))
def test_a_quantile_is_within_the_relative_accuracy(values: list[float], q: float) -> None:
    sketch = LatencySketch()
    for value in values:
        sketch.add(value)
    exact = percentile(sorted(values), q * 100)
    answer = sketch.quantile(q)
    assert answer is not None
    assert abs(answer - exact) <= exact * RELATIVE_ACCURACY * 1.0001


@given(latencies, latencies)
def test_merging_equals_one_sketch_of_all_values(a: list[float], b: list[float]) -> None:
    left, right, whole = LatencySketch(), LatencySketch(), LatencySketch()
    for value in a:
        left.add(value)
        whole.add(value)
    for value in b:
        right.add(value)
        whole.add(value)
    merged = LatencySketch.from_json(left.to_json()).merge(LatencySketch.from_json(right.to_json()))
    assert merged.buckets == whole.buckets
    assert merged.count == whole.count
    for q in (0.5, 0.95, 0.99):
        assert merged.quantile(q) == whole.quantile(q)


def test_a_value_lies_within_its_bucket() -> None:
    for value in (1e-3, 0.0123, 1.0, 2.5, 999.0):
        low, high = bucket_bounds(bucket_of(value))
        assert low < value <= high * (1 + 1e-12)


def test_cumulative_counts_for_prometheus_buckets() -> None:
    sketch = LatencySketch()
    rng = random.Random(1)
    values = [rng.uniform(0, 2) for _ in range(1000)]
    for value in values:
        sketch.add(value)
    bounds = (0.5, 1.0, 1.5, 10.0)
    counts = sketch.cumulative(bounds)
    assert counts[-1] == 1000
    assert counts == sorted(counts)
    for bound, count in zip(bounds[:-1], counts[:-1], strict=True):
        exact = sum(1 for v in values if v <= bound)
        assert abs(count - exact) <= 0.03 * len(values)


def test_an_empty_sketch_has_no_quantiles() -> None:
    assert LatencySketch().quantile(0.99) is None
