"""Figures derived from one server's step rows: per-connection costs and the limit row.

:func:`shown` writes a figure for the reports ("n/a" when it was not measured).
"""

from __future__ import annotations

import statistics

from loadtest.compare.steps import Outcome, StepRow
from loadtest.fit import slope

MIN_CONNECTIONS_FOR_SLOPE = 10  # below this many connections a per-connection cost is noise


def per_connection(run: dict, key: str) -> float | None:
    """Cost of one more connection in ``key`` (slope over the baseline and every step)."""
    base = run.get("baseline") or {}
    base_key = {"rss_bytes": "rss", "vms_bytes": "vms", "threads": "threads", "open_fds": "fds"}
    points = [(0.0, base.get(base_key[key]))] if base.get("connections") == 0 else []
    points += [(r.connections, getattr(r, key)) for r in run["steps"]]
    if max((x or 0 for x, _ in points), default=0) < MIN_CONNECTIONS_FOR_SLOPE:
        return None
    return slope(points)


def shown(value, fmt: str = "{:,.0f}") -> str:
    """``value`` in ``fmt``, or "n/a" for a figure that was not measured."""
    return "n/a" if value is None else fmt.format(value)


def row(run: dict, index: int | None) -> StepRow | None:
    """The step row of ``run`` with this index (None for None or no such row)."""
    if index is None:
        return None
    return next((r for r in run["steps"] if r.index == index), None)


def p99(r: StepRow | None) -> float | None:
    """Locust's own p99 at the step's end when present, else from the exporter histogram."""
    if r is None:
        return None
    return r.locust_p99_ms if r.locust_p99_ms is not None else r.latency_p99_ms


def p50(r: StepRow | None) -> float | None:
    if r is None:
        return None
    return r.locust_p50_ms if r.locust_p50_ms is not None else r.latency_p50_ms


def cpu_us_per_delivery(r: StepRow | None) -> float | None:
    if r is None or not r.deliveries_per_s or r.server_cpu_cores is None:
        return None
    return 1e6 * r.server_cpu_cores / r.deliveries_per_s


def locust_us_per_delivery(r: StepRow | None) -> float | None:
    """CPU of all Locust processes per message the server delivered, in µs."""
    if r is None or not r.deliveries_per_s or r.locust_cpu_mean is None:
        return None
    return 1e6 * r.locust_cpu_mean / 100 / r.deliveries_per_s


def derive(run: dict) -> dict:
    """The headline figures of one server run."""
    limit = run["limit"]
    ok = row(run, limit["last_ok_step"])
    broke = row(run, limit["step"])
    rss = per_connection(run, "rss_bytes")
    vms = per_connection(run, "vms_bytes")
    valid = [r for r in run["steps"] if r.outcome != Outcome.INVALID]
    busy = [r for r in valid if (r.deliveries_per_s or 0) >= 1000]  # costs per delivery from these
    shares = [
        r.busiest_thread_share
        for r in run["steps"]
        if r.busiest_thread_share is not None and (r.thread_cpu_seconds or 0) >= 0.5
    ]
    return {
        "kib_per_connection": None if rss is None else rss / 1024,
        "virtual_kib_per_connection": None if vms is None else vms / 1024,
        "threads_per_connection": per_connection(run, "threads"),
        "fds_per_connection": per_connection(run, "open_fds"),
        "max_connections": max((r.connections or 0 for r in run["steps"]), default=0),
        "max_rss_bytes": max((r.rss_bytes or 0 for r in run["steps"]), default=0),
        "max_threads": max((r.threads or 0 for r in run["steps"]), default=0),
        "last_ok": None
        if ok is None
        else {
            "users": ok.users_target,
            "connections": ok.connections,
            "deliveries_per_s": ok.deliveries_per_s,
            "server_cpu_cores": ok.server_cpu_cores,
            "p50_ms": p50(ok),
            "p99_ms": p99(ok),
            "cpu_us_per_delivery": cpu_us_per_delivery(ok),
        },
        "at_limit": None
        if broke is None
        else {
            "users": broke.users_target,
            "deliveries_per_s": broke.deliveries_per_s,
            "server_cpu_cores": broke.server_cpu_cores,
            "p99_ms": p99(broke),
            "failure_ratio": broke.failure_ratio,
        },
        "max_server_cpu_cores": max((r.server_cpu_cores or 0 for r in valid), default=None),
        "busiest_thread_share": sum(shares) / len(shares) if shares else None,
        "seq_failures": sum(r.failures_by_name.get("seq", 0) for r in run["steps"]),
        "failures": sum(r.failures for r in run["steps"]),
        "invalid_steps": sum(1 for r in run["steps"] if r.outcome == Outcome.INVALID),
        "locust_processes": run["pinning"].get("locust_processes", 1),
        "locust_busiest_cpu_peak": max(
            (r.locust_busiest_cpu_mean or 0 for r in run["steps"]), default=None
        ),
        "locust_us_per_delivery": _median([locust_us_per_delivery(r) for r in busy]),
        "server_us_per_delivery": _median([cpu_us_per_delivery(r) for r in busy]),
    }


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def largest_common_step(a: dict, b: dict) -> tuple[StepRow, StepRow] | None:
    """Rows of the largest user count both runs served as a valid, ok step."""
    ok_a = {r.users_target: r for r in a["steps"] if r.outcome == Outcome.OK}
    ok_b = {r.users_target: r for r in b["steps"] if r.outcome == Outcome.OK}
    common = sorted(set(ok_a) & set(ok_b))
    return (ok_a[common[-1]], ok_b[common[-1]]) if common else None
