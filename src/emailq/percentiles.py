"""Nearest-rank percentiles, shared by the demo's summary and the load-test tool's report."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    if not 0 <= pct <= 100:
        raise ValueError("pct must be within 0 and 100")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])
