"""Summaries of repeated timings: median, min, max and spread, and latency percentiles."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["percentile", "summary"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated between neighbours."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``median``, ``min``, ``max``, ``spread`` ((max - min) / median: how far to trust the
    median on a noisy machine) and ``n`` of one metric's samples."""
    median = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": median, "min": lo, "max": hi, "spread": (hi - lo) / median if median else 0.0,
            "n": len(values)}


def latency(values: Sequence[float]) -> dict[str, Any]:
    """Percentiles p50/p90/p99, mean and count of per-token latencies (seconds)."""
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "mean": statistics.fmean(values), "n": len(values)}
