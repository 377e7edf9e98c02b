"""The nearest-rank percentile the demo and the load-test report share."""

from __future__ import annotations

import pytest

from emailq.percentiles import percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7
    assert percentile([], 99) == 0
    assert percentile([1.0, 2.0, 3.0, 1000.0], 99) == 1000  # a stall is never averaged away
    with pytest.raises(ValueError):
        percentile(values, 101)
