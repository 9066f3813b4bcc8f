"""Prometheus text exposition: parse a scrape into plain numbers, and histogram maths."""

from __future__ import annotations

import math
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last

# Threads of scrape_all, started at its first calls and then kept: a sampler scrapes once a
# second, and near a threaded server's wall (pid_max) a new thread may not be had.
_SCRAPERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="scrape")


def parse(text: str) -> dict:
    """Flatten a scrape: ``{"name": value, "name{label=v}": value, "hist:name": [(le, n)]}``.

    Histograms are kept whole (cumulative buckets, sorted by bound) under
    ``hist:<name>``; their ``_sum`` and ``_count`` samples are kept as numbers.
    """
    flat: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket") and "le" in sample.labels:
                other = {k: v for k, v in sample.labels.items() if k != "le"}
                key = sample.name[: -len("_bucket")]
                if other:
                    key += _labels(other)
                flat.setdefault(f"hist:{key}", {})[float(sample.labels["le"])] = sample.value
                continue
            flat[sample.name + _labels(sample.labels)] = sample.value
    for key, value in list(flat.items()):
        if key.startswith("hist:"):
            flat[key] = sorted(value.items())
    return flat


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def scrape(url: str, timeout: float = 2.0) -> dict | None:
    """GET and parse ``url``; ``None`` when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return parse(resp.read().decode())
    except (OSError, ValueError):
        return None


def scrape_all(urls: list[str], timeout: float = 2.0) -> dict | None:
    """Scrape every worker of one server, at once, and add them up; ``None`` if any does
    not answer within ``timeout`` s.

    Counters, gauges and histogram buckets are summed: the server's total
    connections, RSS, threads and CPU are the sums over its processes.
    """
    # In parallel: one slow worker does not delay the others' answers.
    flats = list(_SCRAPERS.map(lambda url: scrape(url, timeout), urls))
    if any(flat is None for flat in flats):
        return None
    if len(flats) == 1:
        return flats[0]
    merged: dict = {}
    for flat in flats:
        for key, value in flat.items():
            if key.startswith("hist:"):
                sums = dict(merged.get(key, []))
                for le, n in value:
                    sums[le] = sums.get(le, 0.0) + n
                merged[key] = sorted(sums.items())
            else:
                merged[key] = merged.get(key, 0.0) + value
    return merged


def delta(later: Buckets | None, earlier: Buckets | None) -> Buckets:
    """Buckets of the observations made between two scrapes of one histogram."""
    if not later:
        return []
    before = dict(earlier or [])
    return [(le, max(0.0, n - before.get(le, 0.0))) for le, n in later]


def count(buckets: Buckets) -> float:
    return buckets[-1][1] if buckets else 0.0


def quantile(q: float, buckets: Buckets) -> float | None:
    """``histogram_quantile`` as Prometheus computes it (linear within a bucket)."""
    total = count(buckets)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bound: the bound is all we know
            inside = cumulative - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, cumulative
    return lower


def share_above(threshold: float, buckets: Buckets) -> float | None:
    """Fraction of observations above ``threshold`` (exact when it is a bucket bound)."""
    total = count(buckets)
    if total <= 0:
        return None
    at_or_below = 0.0
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if le >= threshold:
            inside = cumulative - below
            if math.isinf(le) or le == threshold:
                at_or_below = cumulative if le == threshold else below
            else:  # interpolate inside the bucket, as quantile() does
                at_or_below = below + inside * (threshold - lower) / (le - lower)
            break
        lower, below = le, cumulative
    return max(0.0, 1.0 - at_or_below / total)
