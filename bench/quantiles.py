"""Percentiles for benchmark tables."""

from __future__ import annotations

import numpy as np


def percentiles_ms(values: list[float], points: tuple[int, ...] = (50, 95, 99)) -> list[float]:
    """The given percentiles of ``values`` (seconds) in milliseconds; NaN when there are none."""
    if not values:
        return [float("nan")] * len(points)
    return [float(v) * 1000 for v in np.percentile(np.asarray(values), points)]
