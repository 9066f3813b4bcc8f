"""Say in words why a server broke, from the figures of its last good step and its limit.

Nothing here is written in advance: every sentence is built from the two step
rows (the highest good one and the lowest breached one) recorded in the same
run, and the one-word reading follows the rule printed with it:

- **out of CPU**: at its limit the server used at least ``CPU_BOUND`` of the
  CPU it was given (its budget, or one core when pinned, or the machine);
- otherwise **not out of CPU**: it broke with CPU to spare, so the figures that
  follow (threads waiting to run, context switches, event-loop lag, refusals)
  are where to look.
"""

from __future__ import annotations

from operator import attrgetter

from loadtest.compare import figures
from loadtest.compare.figures import shown
from loadtest.compare.steps import Criterion, StepRow

CPU_BOUND = 0.90  # share of the CPU the server was given
# Limits where Locust's own failures say what the clients met (quoted in the text).
CONNECTION_CRITERIA = frozenset({Criterion.UNRESPONSIVE, Criterion.REFUSED, Criterion.FAILURES})

RULE = (
    f"“out of CPU” when the server used at least {CPU_BOUND:.0%} of the CPU it was given "
    "(its budget, one core when pinned, else the machine's CPUs) at its limit"
)


def cpu_given(run: dict, cpus: int) -> float:
    """Cores the server could use in this run."""
    if run.get("server_cpus"):
        return float(run["server_cpus"])
    return 1.0 if run["pinning"].get("server_cpu") is not None else float(cpus)


def explain(run: dict, cpus: int) -> dict:
    """``{"reading": ..., "text": ...}`` for one server run (text empty when no limit)."""
    limit = run["limit"]
    if not limit["reached"]:
        return {"reading": None, "text": ""}
    good = figures.row(run, limit["last_ok_step"])
    bad = figures.row(run, limit["step"])
    given = cpu_given(run, cpus)
    cpu_bad = _cpu(bad)
    parts = [f"{run['kind']} broke at {limit['users']:,} users: {limit['criterion']}."]
    if good is not None:
        parts.append(
            f"From {limit['last_ok_users']:,} users (its last good step) to {limit['users']:,}:"
        )
    threads = shown(None if bad is None else bad.threads)
    changes = [  # what, a row's attribute (or a function of the row), format, unit
        ("CPU", _cpu, "{:.2f}", f" cores of the {given:g} it was given"),
        ("throttled by its CPU budget", "throttled_per_s", "{:.2f}", " s per second"),
        (f"its {threads} threads spent", "wait_to_run_per_s", "{:.2f}",
         " s per second waiting to run"),
        ("voluntary context switches per delivery", "voluntary_switches_per_delivery", "{:.2f}",
         ""),
        ("involuntary context switches per delivery", "involuntary_switches_per_delivery",
         "{:.3f}", ""),
        ("event-loop lag p99", "loop_lag_p99_ms", "{:,.1f}", " ms"),
        ("deliveries/s", "deliveries_per_s", "{:,.0f}", ""),
        ("p99", figures.p99, "{:,.0f}", " ms"),
    ]  # fmt: skip
    parts.append("; ".join(filter(None, (_change(good, bad, *c) for c in changes))) + ".")
    if bad is not None:
        parts.append(
            f"At the limit: RSS {shown((bad.rss_bytes or 0) / 2**20)} MiB, "
            f"{shown(bad.open_fds)} fds, {shown(bad.threads)} threads, "
            f"{shown(bad.connections)} connections."
        )
    failures = run.get("locust_failures") or []
    if failures and bad is not None and bad.criterion in CONNECTION_CRITERIA:
        top = "; ".join(f"{f['name']}: {f['error']} ×{f['occurrences']:,}" for f in failures[:3])
        parts.append(f"Locust's most frequent failures in the run: {top}.")
    if cpu_bad is None:
        reading = None
    elif cpu_bad >= CPU_BOUND * given:
        reading = "out of CPU"
    else:
        reading = "not out of CPU"
        parts.append(
            f"It used {cpu_bad:.2f} of its {given:g} cores when it broke: something other "
            "than CPU gave out first."
        )
    return {"reading": reading, "text": " ".join(parts)}


def _cpu(row: StepRow | None) -> float | None:
    """Exact CPU from the threads' schedstat, else the server's own counter."""
    if row is None:
        return None
    return row.cpu_cores_exact if row.cpu_cores_exact is not None else row.server_cpu_cores


def _change(
    good: StepRow | None, bad: StepRow | None, what: str, value, fmt: str, unit: str
) -> str:
    """``what`` from the good row to the bad one, or at the bad one alone ("" without it)."""
    get = value if callable(value) else attrgetter(value)
    before, after = (None if r is None else get(r) for r in (good, bad))
    if after is None:
        return ""
    if before is None:
        return f"{what} {fmt.format(after)}{unit}"
    return f"{what} {fmt.format(before)} → {fmt.format(after)}{unit}"
