"""Fitting a line to measurements: the one slope every runner uses."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def slope(points: Iterable[tuple[float | None, float | None]]) -> float | None:
    """Least-squares slope of y over x, skipping points with a missing coordinate.

    ``None`` when fewer than two distinct x remain (no line to fit).
    """
    xs, ys = [], []
    for x, y in points:
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    if len(set(xs)) < 2:
        return None
    return statistics.linear_regression(xs, ys).slope
