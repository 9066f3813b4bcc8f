"""Reduce the per-second samples of one step to one row, and decide the limit.

A step runs from ``start`` to ``end`` (wall clock). Throughput, CPU and
latency are read over its last ``window`` seconds (ramp and settling
excluded); failures, refusals and disconnects over the whole step.

Rules (thresholds in :class:`loadtest.compare.profiles.StepRules`, shown in the report):

1. the server process exited → limit ``died`` (only then);
2. the server is alive but answered no scrape of /metrics for 5 s, or more than
   1 % of connects failed while the server refused none of them (handshakes
   timed out or were dropped) → limit ``unresponsive``;
3. the server refused connections (``chat_connections_rejected_total`` grew)
   → limit ``refused``;
   the server's resident memory, summed over its processes, passed 80 % of the
   machine's RAM → limit ``memory``;
4. no sample fell in the judged window (the sampler, starved on a saturated
   machine, got no turn), or the busiest load-generator process averaged above 90 %
   of a core over the window → the step is ``invalid`` (it measured nothing, or its
   latency is the load generator's), never the server's limit;
5. more than 1 % of requests failed → limit ``failures``;
6. p99 of the scenario latency above the SLO → limit ``p99 over SLO``: computed from
   Locust's response-time histogram over the window as "more than 1 % of the
   receptions took longer than the SLO" (exact when the SLO is a bucket bound);
7. otherwise ``ok``.

A run that measures the load generator rather than the server
(``StepRules.judge_server`` false: the Locust capacity profile) skips rules 5
and 6: its steps are ok until Locust's CPU passes the threshold.

A latency or failure breach must be confirmed: if the next (bigger) step is
ok, the breach is relabelled ``transient`` and the run goes on; two breaches in
a row, or a breach on the last step, make the limit (the first of them).
``died``, ``unresponsive``, ``refused`` and ``memory`` need no confirmation.

After the last step: ``not reached (max step)``; after ``invalid_steps_to_stop``
invalid steps in a row: ``not reached (load generator saturated)``.

The climb finds the first (confirmed) breach; the narrowing steps then probe,
each on a freshly started server, between the last good step and that breach
(``loadtest.compare.knee``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from itertools import pairwise
from typing import NamedTuple

import psutil

from loadtest import prom
from loadtest.compare.profiles import StepRules


class Outcome(StrEnum):
    """What one step says about the server (stored as its string in summary.json)."""

    OK = "ok"
    LIMIT = "limit"  # the server's limit, by one of the criteria
    INVALID = "invalid"  # Locust was saturated: the step says nothing about the server
    TRANSIENT = "transient"  # a breach that the next (bigger) step did not confirm


class Criterion(StrEnum):
    """Why a step is a limit."""

    DIED = "died"
    UNRESPONSIVE = "unresponsive"
    REFUSED = "refused"
    MEMORY = "memory"
    FAILURES = "failures"
    SLO = "p99 over SLO"


# Limits that need no confirmation by the next step.
HARD_CRITERIA = frozenset(
    {Criterion.DIED, Criterion.UNRESPONSIVE, Criterion.REFUSED, Criterion.MEMORY}
)


class Judgement(NamedTuple):
    outcome: Outcome
    criterion: Criterion | None  # for a limit
    why: str  # the criterion in words, with the figures that met it


CPUS = os.cpu_count() or 1
MEMORY_BYTES = psutil.virtual_memory().total
PEAK_SPAN = 3.0  # seconds: the "peak" CPU of a step is its busiest 3 s
IGNORED_FAILURES = ("cpu_saturated",)  # the saturation guard's marker, not a request


def at(samples: list[dict], t: float, part: str | None = None) -> dict | None:
    """The last sample taken at or before ``t`` (else the first one).

    With ``part`` ("server" or "locust"), only samples in which that scrape
    answered count: a missed scrape must not turn a delta into a whole-run total.
    """
    usable = [s for s in samples if part is None or s.get(part) is not None]
    best = None
    for sample in usable:
        if sample["t"] <= t:
            best = sample
        else:
            break
    return best if best is not None else (usable[0] if usable else None)


def _get(sample: dict | None, part: str, key: str):
    if sample is None or sample.get(part) is None:
        return None
    return sample[part].get(key)


def _sockstat(sample: dict | None, key: str) -> int | None:
    """One of the kernel's TCP socket figures in a sample (machine-wide: both ends of every
    loopback connection)."""
    return ((sample or {}).get("sockstat") or {}).get(key)


def _rate(a: dict | None, b: dict | None, key: str) -> float | None:
    x, y = _get(a, "server", key), _get(b, "server", key)
    if x is None or y is None:
        return None
    ta, tb = a.get("server_t", a["t"]), b.get("server_t", b["t"])
    return (y - x) / (tb - ta) if tb > ta else None


def _peak_rate(samples: list[dict], key: str, span: float = PEAK_SPAN) -> float | None:
    """Highest rate of ``key`` over any ``span`` seconds (1 s rates jitter with scrape delays)."""
    best = None
    for i, a in enumerate(samples):
        b = next((s for s in samples[i + 1 :] if s["t"] - a["t"] >= span - 0.2), None)
        if b is None:
            break
        rate = _rate(a, b, key)
        if rate is not None and (best is None or rate > best):
            best = rate
    return best


def _sum_delta(a: dict | None, b: dict | None, part: str, key: str, skip=()) -> float:
    before = _get(a, part, key) or {}
    after = _get(b, part, key) or {}
    return sum(max(0.0, v - before.get(k, 0.0)) for k, v in after.items() if k not in skip)


def _by_reason(a: dict | None, b: dict | None, part: str, key: str, skip=()) -> dict:
    before = _get(a, part, key) or {}
    after = _get(b, part, key) or {}
    out = {k: max(0.0, v - before.get(k, 0.0)) for k, v in after.items() if k not in skip}
    return {k: v for k, v in out.items() if v}


def _mean_ms(a: dict | None, b: dict | None, count: float | None) -> float | None:
    """Mean of the scenario latency between two Locust samples (its histogram's sum)."""
    before, after = _get(a, "locust", "latency_sum"), _get(b, "locust", "latency_sum")
    if before is None or after is None or not count:
        return None
    return 1000.0 * (after - before) / count


def mean_known(values: list[float | None]) -> float | None:
    """The mean of the values that are not None (None when none is)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@dataclass
class StepRow:
    """One step reduced to its figures and its judgement (see the rules above).

    summary.json stores it as a dict (:meth:`to_dict`); :meth:`from_dict` reads
    the rows of older reports too (a figure they lack is ``None``). Figures are
    ``None`` when the samples could not give them (a scrape that never answered).
    """

    index: int
    users_target: int
    start: float  # wall clock
    end: float
    window_s: float = 0.0  # seconds actually judged (samples' span)
    # At the step's end: Locust's users, and the server's state
    users: float | None = None
    connections: float | None = None
    rss_bytes: float | None = None
    vms_bytes: float | None = None
    open_fds: float | None = None
    threads: float | None = None
    rooms: float | None = None
    # Over the judged window: throughput, CPU, latency
    server_cpu_cores: float | None = None  # the server's own counter
    server_cpu_cores_max: float | None = None  # its busiest PEAK_SPAN seconds
    deliveries_per_s: float | None = None
    received_per_s: float | None = None
    fanout_receptions_per_s: float | None = None  # fan-out and acks Locust received
    latency_count: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_mean_ms: float | None = None
    latency_over_slo_share: float | None = None
    server_fanout_p99_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    # Over the whole step: requests, failures, refusals, disconnects, drops
    requests: float = 0.0
    failures: float = 0.0
    failure_ratio: float = 0.0
    failures_by_name: dict[str, float] = field(default_factory=dict)
    connects: float = 0.0
    connect_failures: float = 0.0
    rejected: dict[str, float] = field(default_factory=dict)  # by reason
    disconnects: dict[str, float] = field(default_factory=dict)  # by reason
    dropped: dict[str, float] = field(default_factory=dict)  # by reason
    # Load generator and machine (CPU in % of one core, or of every CPU for the machine)
    locust_cpu_mean: float | None = None
    locust_cpu_max: float | None = None
    locust_busiest_cpu_mean: float | None = None  # the busiest Locust process
    machine_cpu_mean: float | None = None
    other_cpu_cores: float | None = None  # everything but this server and its Locust
    cpus: int = CPUS
    server_missed_scrapes: int = 0
    server_silent_s: float = 0.0
    server_exited: bool = False
    server_up: bool = True
    # Connections at scale (c100k): the kernel's sockets, Locust's memory, handshakes
    handshakes_per_s_peak: float | None = None
    tcp_sockets: float | None = None
    tcp_mem_bytes: float | None = None
    tcp_time_wait: float | None = None
    locust_rss_bytes: float | None = None
    machine_memory_used_bytes: float | None = None
    memory_total_bytes: float = MEMORY_BYTES
    # The judgement
    outcome: Outcome = Outcome.OK
    criterion: Criterion | None = None  # for a limit (and a transient breach)
    reason: str = ""  # the criterion in words, with the figures that met it
    # Added by the runner: where the step's raw samples are, and its window
    run: str | None = None  # the raw samples are in <run>-samples.jsonl
    # "climb", "base" or "narrow" (knee: a narrowing run's repeat of the last good level,
    # then its probe); None in a run of its own
    phase: str | None = None
    ramp_end: float | None = None
    judged_from: float | None = None
    settled: bool = True  # the server held 99 % of the step's users when the window began
    # Added by the runner: the server's threads over the window (schedstat), Locust's own p99
    thread_cpu_seconds: float | None = None
    busiest_thread_share: float | None = None
    cpu_cores_exact: float | None = None
    wait_to_run_per_s: float | None = None
    voluntary_switches_per_delivery: float | None = None
    involuntary_switches_per_delivery: float | None = None
    throttled_per_s: float | None = None
    locust_p50_ms: float | None = None
    locust_p99_ms: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> StepRow:
        """A row from summary.json, of this version or an older one (unknown keys are
        dropped, missing ones take their defaults)."""
        names = {f.name for f in fields(cls)}
        row = cls(**{k: v for k, v in data.items() if k in names})
        row.outcome = Outcome(row.outcome)
        if row.criterion is not None:
            row.criterion = Criterion(row.criterion)
        elif row.outcome in (Outcome.LIMIT, Outcome.TRANSIENT):
            # Rows written before the criterion was stored: its words start with it.
            row.criterion = next((c for c in Criterion if row.reason.startswith(c)), None)
        return row

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    index: int,
    target: int,
    start: float,
    end: float,
    window: float,
    samples: list[dict],
    limits: StepRules,
    exited: bool = False,
) -> StepRow:
    """One row for the step ``[start, end]`` from the run's samples, judged.

    ``exited``: the server process ended during this step (the runner saw it).
    """
    w_start = max(start, end - window)
    # Server figures from samples where the server answered, Locust's where Locust did.
    first, w_first, last = (at(samples, t, "server") for t in (start, w_start, end))
    l_first, lw_first, l_last = (at(samples, t, "locust") for t in (start, w_start, end))
    inside = [s for s in samples if w_start <= s["t"] <= end]
    seconds = (last["t"] - w_first["t"]) if (last and w_first) else 0.0
    l_seconds = (l_last["t"] - lw_first["t"]) if (l_last and lw_first) else 0.0

    slo_s = limits.slo_ms / 1000.0
    latency = prom.delta(_get(l_last, "locust", "latency"), _get(lw_first, "locust", "latency"))
    server_fanout = prom.delta(_get(last, "server", "fanout"), _get(w_first, "server", "fanout"))
    loop_lag = prom.delta(_get(last, "server", "loop_lag"), _get(w_first, "server", "loop_lag"))

    requests = _sum_delta(l_first, l_last, "locust", "requests", IGNORED_FAILURES)
    failures = _sum_delta(l_first, l_last, "locust", "failures", IGNORED_FAILURES)
    received_by_locust = _by_reason(lw_first, l_last, "locust", "requests")

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000.0

    def per_s(count: float) -> float | None:
        return count / l_seconds if l_seconds > 0 else None

    silent_s = silence(samples, start, end, limits.server_silent_s)
    row = StepRow(
        index=index,
        users_target=target,
        start=start,
        end=end,
        window_s=round(seconds, 2),
        users=_get(l_last, "locust", "users"),
        connections=_get(last, "server", "connections"),
        rss_bytes=_get(last, "server", "rss"),
        vms_bytes=_get(last, "server", "vms"),
        open_fds=_get(last, "server", "fds"),
        threads=_get(last, "server", "threads"),
        rooms=_get(last, "server", "rooms"),
        server_cpu_cores=_rate(w_first, last, "cpu_seconds"),
        server_cpu_cores_max=_peak_rate(inside, "cpu_seconds"),
        deliveries_per_s=_rate(w_first, last, "delivered"),
        received_per_s=_rate(w_first, last, "received"),
        fanout_receptions_per_s=per_s(
            received_by_locust.get("fanout", 0.0) + received_by_locust.get("ack", 0.0)
        ),
        latency_count=prom.count(latency),
        latency_p50_ms=ms(prom.quantile(0.5, latency)),
        latency_p99_ms=ms(prom.quantile(limits.slo_quantile, latency)),
        latency_over_slo_share=prom.share_above(slo_s, latency),
        latency_mean_ms=_mean_ms(lw_first, l_last, prom.count(latency)),
        server_fanout_p99_ms=ms(prom.quantile(0.99, server_fanout)),
        loop_lag_p99_ms=ms(prom.quantile(0.99, loop_lag)),
        requests=requests,
        failures=failures,
        failure_ratio=failures / requests if requests else 0.0,
        failures_by_name=_by_reason(first, last, "locust", "failures", IGNORED_FAILURES),
        connects=_by_reason(l_first, l_last, "locust", "requests").get("connect", 0.0),
        connect_failures=_by_reason(l_first, l_last, "locust", "failures").get("connect", 0.0),
        rejected=_by_reason(first, last, "server", "rejected"),
        disconnects=_by_reason(first, last, "server", "disconnects"),
        dropped=_by_reason(first, last, "server", "dropped"),
        locust_cpu_mean=mean_known([s.get("locust_cpu") for s in inside]),
        locust_cpu_max=max(
            (s["locust_cpu"] for s in inside if s.get("locust_cpu") is not None), default=None
        ),
        locust_busiest_cpu_mean=mean_known(
            [s.get("locust_cpu_busiest", s.get("locust_cpu")) for s in inside]
        ),
        machine_cpu_mean=mean_known([s.get("machine_cpu") for s in inside]),
        server_missed_scrapes=sum(
            1 for s in samples if start <= s["t"] <= end and s.get("server") is None
        ),
        server_silent_s=silent_s,
        server_exited=exited,
        server_up=silent_s < limits.server_silent_s,
        handshakes_per_s_peak=_peak_rate([s for s in samples if start <= s["t"] <= end], "opened"),
        tcp_sockets=_sockstat(last, "inuse"),
        tcp_mem_bytes=_sockstat(last, "mem_bytes"),
        tcp_time_wait=_sockstat(last, "tw"),
        locust_rss_bytes=(l_last or {}).get("locust_rss"),
        machine_memory_used_bytes=(last or {}).get("machine_memory_used"),
    )
    row.other_cpu_cores = other_cpu(row)
    row.outcome, row.criterion, row.reason = judge(row, limits)
    return row


def silence(samples: list[dict], start: float, end: float, timeout: float) -> float:
    """Longest time within ``[start, end]`` in which the server answered no scrape.

    A sample without ``server`` is a scrape that got no answer within ``timeout`` s
    (the sampler's): consecutive ones from ``t1`` to ``t2`` prove ``t2 + timeout - t1``
    s without an answer. Samples that are merely far apart (a busy machine slows the
    sampler too) prove nothing about the server.
    """
    longest, since = 0.0, None
    for sample in samples:
        if sample["t"] < start:
            continue
        if sample["t"] > end:
            break
        if sample.get("server") is not None:
            since = None
            continue
        since = sample["t"] if since is None else since
        longest = max(longest, sample["t"] + timeout - since)
    return longest


def why_not_counted(row: StepRow, climb_limit: dict) -> str | None:
    """Why a narrowing row that breached says nothing about the level it probed (None: it
    counts, or it is no breach).

    A narrowing run repeats the last good level first (``phase == "base"``), then
    steps to the level it probes. A breach at that first level, or one with fewer
    connections than the climb held (its ramp broke, not its level), means the probed
    level was never tested: such a row stops the narrowing, and is not plotted.
    """
    if row.outcome != Outcome.LIMIT:
        return None
    if row.phase == "base":
        return (
            f"on its way to the level it was to probe, it breached at {row.users_target:,} "
            "users, the last good level, on a fresh server"
        )
    held = climb_limit.get("last_ok_users") or 0
    if row.phase == "narrow" and (row.connections or 0) < held:
        return (
            f"it broke on its way up at {row.connections or 0:,.0f} connections, below the "
            f"{held:,} the climb held"
        )
    return None


def other_cpu(row: StepRow) -> float | None:
    """Cores used by everything but this server and its Locust (other work on a shared machine)."""
    machine, server, locust = row.machine_cpu_mean, row.server_cpu_cores, row.locust_cpu_mean
    if machine is None or server is None or locust is None:
        return None
    return max(0.0, machine / 100 * row.cpus - server - locust / 100)


def judge(row: StepRow, limits: StepRules) -> Judgement:
    """What one step row says: ok, a limit (and by which criterion), or invalid."""
    limit = Outcome.LIMIT
    if row.server_exited:
        return Judgement(limit, Criterion.DIED, "died (the server process exited)")
    if not row.server_up:
        return Judgement(limit, Criterion.UNRESPONSIVE, (
            f"unresponsive (/metrics did not answer for {row.server_silent_s:.0f} s; "
            "the process was alive)"
        ))  # fmt: skip
    connects, failed = row.connects, row.connect_failures
    refused = int(sum(row.rejected.values()))
    too_many = connects and failed / connects > limits.max_connect_failure_ratio
    if too_many and not refused:
        return Judgement(limit, Criterion.UNRESPONSIVE, (
            f"unresponsive ({int(failed)} of {int(connects)} connects failed and the server "
            "refused none: handshakes timed out)"
        ))  # fmt: skip
    if refused:
        return Judgement(limit, Criterion.REFUSED, (
            f"refused ({refused} rejected, {int(failed)} of {int(connects)} connects failed)"
        ))  # fmt: skip
    rss, budget = row.rss_bytes, limits.max_memory_share * row.memory_total_bytes
    if rss is not None and rss > budget:
        return Judgement(limit, Criterion.MEMORY, (
            f"memory (RSS {rss / 2**30:.1f} GiB > {limits.max_memory_share:.0%} of RAM)"
        ))  # fmt: skip
    if row.window_s <= 0:
        return Judgement(Outcome.INVALID, None, (
            "not measured: no sample in its judged window (the sampler got no turn on a "
            "saturated machine)"
        ))  # fmt: skip
    cpu = row.locust_busiest_cpu_mean
    if cpu is None:
        cpu = row.locust_cpu_mean
    if cpu is not None and cpu > limits.locust_cpu_saturated:
        return Judgement(Outcome.INVALID, None, (
            f"load generator CPU {cpu:.0f}% > {limits.locust_cpu_saturated:.0f}%"
        ))  # fmt: skip
    if not limits.judge_server:
        return Judgement(Outcome.OK, None, "")
    if row.failure_ratio > limits.max_failure_ratio:
        return Judgement(limit, Criterion.FAILURES, (
            f"failures {100 * row.failure_ratio:.1f}% > {100 * limits.max_failure_ratio:.0f}%"
        ))  # fmt: skip
    over = row.latency_over_slo_share
    if over is not None and over > 1.0 - limits.slo_quantile:
        return Judgement(limit, Criterion.SLO, (
            f"p99 over SLO ({100 * over:.1f}% of receptions > {limits.slo_ms:.0f} ms)"
        ))  # fmt: skip
    return Judgement(Outcome.OK, None, "")


def _hard(row: StepRow) -> bool:
    return row.outcome == Outcome.LIMIT and row.criterion in HARD_CRITERIA


def confirm(rows: list[StepRow]) -> None:
    """Relabel a latency or failure breach followed by an ok step as ``transient``.

    The load only grows from step to step, so a server that was over the SLO at
    N users and fine at N + step users was disturbed, not at its limit (on a
    shared machine a neighbour's burst does that). A breach on the last step,
    or followed by another breach or an invalid step, stands.
    """
    for row, following in pairwise(rows):
        if row.outcome == Outcome.LIMIT and not _hard(row) and following.outcome == Outcome.OK:
            row.outcome = Outcome.TRANSIENT
            row.reason = f"{row.reason}; not confirmed by the next step"


def verdict(rows: list[StepRow], limits: StepRules, finished: bool) -> dict:
    """The server's limit from its step rows (in order); relabels transient breaches.

    ``finished``: the step plan ran to its end (else it was cut short).
    """
    confirm(rows)
    last_ok = None
    invalid_run = 0
    unmeasured = False  # an invalid step in the current run of them had no window at all
    for row in rows:
        if row.outcome == Outcome.LIMIT:
            return {
                "reached": True,
                "users": row.users_target,
                "criterion": row.reason,
                "step": row.index,
                "last_ok_users": last_ok.users_target if last_ok else None,
                "last_ok_step": last_ok.index if last_ok else None,
            }
        if row.outcome == Outcome.INVALID:
            invalid_run += 1
            unmeasured = unmeasured or row.window_s <= 0
            if invalid_run >= limits.invalid_steps_to_stop:
                break
        elif row.outcome == Outcome.OK:
            invalid_run, unmeasured = 0, False
            last_ok = row
    why = "max step" if finished and invalid_run < limits.invalid_steps_to_stop else None
    if why is None:
        why = "run cut short"
        if invalid_run >= limits.invalid_steps_to_stop:
            why = "steps not measured" if unmeasured else "load generator saturated"
    return {
        "reached": False,
        "users": None,
        "criterion": f"not reached ({why})",
        "step": None,
        "last_ok_users": last_ok.users_target if last_ok else None,
        "last_ok_step": last_ok.index if last_ok else None,
    }


def should_stop(rows: list[StepRow], limits: StepRules) -> bool:
    """True once the rows so far decide the run: a hard limit (died, unresponsive,
    refused, memory), two breaches in a row (a confirmed limit), or too many invalid
    steps in a row."""
    if any(_hard(r) for r in rows):
        return True
    if len(rows) >= 2 and all(r.outcome == Outcome.LIMIT for r in rows[-2:]):
        return True
    tail = rows[-limits.invalid_steps_to_stop :]
    return len(tail) == limits.invalid_steps_to_stop and all(
        r.outcome == Outcome.INVALID for r in tail
    )
