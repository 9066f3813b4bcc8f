"""The article's claims, tested on this run.

The article is *Concurrency models in Python: threads vs Asyncio*, a blog post
dated 2023-09-15 (:data:`ARTICLE`). It lists three pros and three cons of
threads and three pros and two cons of asyncio; each row below restates one of
them in this project's words.

One row per pro and con of threads and of asyncio. Each row names the
measurement that tests it and computes its verdict from this run's figures
with the thresholds below, which the report prints next to each verdict.
Claims a chat climb does not exercise (blocking libraries, the GIL with
CPU-bound work, shared state, simplicity) are tested by ``make claims``
(:mod:`loadtest.claims`), which completes this table; each row says what
tested it (``tested_by``).
"""

from __future__ import annotations

from loadtest.compare import figures
from loadtest.compare.figures import shown
from loadtest.compare.steps import StepRow

ARTICLE = {
    "title": "Concurrency models in Python: threads vs Asyncio",
    "date": "2023-09-15",
    "kind": "blog post",
}

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
NOT_MEASURED = "not measured here"
UNDECIDED = "undecided"  # the facts point both ways, or cannot order the two servers

# Thresholds (also shown in the report).
ONE_CORE = 1.10  # cores: a process above this used more than one core
WHOLE_CORE = 0.90  # cores: a process at or above this wanted (at least) a whole core
MACHINE_SPARE = 90.0  # % of all CPUs: below this, the machine had spare CPU
ONE_THREAD_PER_CONNECTION = 0.9  # threads per connection at or above this
THOUSANDS = 1000  # connections: "thousands of concurrent tasks"
SAME_WITHIN = 0.10  # ratios within 1 ± this count as "no difference"
# Threaded KiB/connection at least this many times async's: "increased memory
# consumption" means clear of the "no difference" band by as much again. (It
# was a bare 1.5, lowered to 1.2 after a first run measured 1.42; it is now
# derived from SAME_WITHIN so that it does not follow the data.)
MEMORY_RATIO = 1 + 2 * SAME_WITHIN
LATENCY_RATIO = 2.0  # p99 ratio that counts as "worse" (and at least LATENCY_FLOOR_MS apart)
LATENCY_FLOOR_MS = 10.0
BUSIEST_THREAD = 0.80  # one thread did at least this share of the process's CPU: no parallelism

THRESHOLDS = {
    "ONE_CORE (cores)": ONE_CORE,
    "WHOLE_CORE (cores)": WHOLE_CORE,
    "MACHINE_SPARE (% of all CPUs)": MACHINE_SPARE,
    "MEMORY_RATIO": MEMORY_RATIO,
    "ONE_THREAD_PER_CONNECTION": ONE_THREAD_PER_CONNECTION,
    "THOUSANDS (connections)": THOUSANDS,
    "SAME_WITHIN": SAME_WITHIN,
    "LATENCY_RATIO": LATENCY_RATIO,
    "LATENCY_FLOOR_MS": LATENCY_FLOOR_MS,
    "BUSIEST_THREAD (share)": BUSIEST_THREAD,
}


# Every claim, in the order of the report's table: its key, side and kind. The
# chat climb tests some; `make claims` (loadtest/claims/) tests the others.
SIDES = {
    "threads-simplicity": ("threads", "pro"),
    "threads-blocking": ("threads", "pro"),
    "threads-libraries": ("threads", "pro"),
    "threads-gil": ("threads", "con"),
    "threads-memory": ("threads", "con"),
    "threads-many": ("threads", "con"),
    "threads-shared-state": ("threads", "con"),
    "asyncio-thousands": ("asyncio", "pro"),
    "asyncio-scalability": ("asyncio", "pro"),
    "asyncio-throughput": ("asyncio", "pro"),
    "asyncio-parallelism": ("asyncio", "pro"),
    "asyncio-shared-state": ("asyncio", "pro"),
    "asyncio-learning-curve": ("asyncio", "con"),
    "asyncio-blocking": ("asyncio", "con"),
}
CLAIM_KEYS = tuple(SIDES)
CHAT_CLIMB = "chat climb (make compare)"
# The claims `make claims` tests with a scenario built for each (or code facts).
BY_CLAIMS_RUN = {
    "threads-simplicity": "code facts (make claims)",
    "threads-blocking": "blocking scenario (make claims)",
    "threads-libraries": "nothing here (make claims says why)",
    "threads-gil": "CPU-bound scenario (make claims)",
    "threads-shared-state": "shared-state experiment and code facts (make claims)",
    "asyncio-parallelism": "CPU-bound scenario (make claims)",
    "asyncio-shared-state": "code facts (make claims)",
    "asyncio-learning-curve": "nothing here (make claims says why)",
    "asyncio-blocking": "blocking scenario (make claims)",
}


def _row(key: str, claim, measurement, rule, verdict, measured) -> dict:
    """The row of claim ``key``; one this climb does not measure names what tests it."""
    side, kind = SIDES[key]
    tested_by = CHAT_CLIMB
    if key in BY_CLAIMS_RUN and verdict == NOT_MEASURED:
        tested_by = BY_CLAIMS_RUN[key]
        measured += f" See make claims: {tested_by}."
    return {
        "side": side, "kind": kind, "claim": claim, "measurement": measurement, "rule": rule,
        "measured": measured, "verdict": verdict, "key": key, "tested_by": tested_by,
    }  # fmt: skip


def evaluate(runs: dict, derived: dict, probes: dict, source_lines: dict) -> list[dict]:
    """All claim rows. ``runs``/``derived``/``probes`` are keyed by "threaded" and "async"."""
    t, a = derived["threaded"], derived["async"]
    return [
        _not_measured(
            "threads-simplicity", "Simplicity: threads are easy to understand and use.",
            f"Context only: non-blank source lines, threaded_server/ "
            f"{source_lines.get('threaded', 'n/a')}, async_server/ "
            f"{source_lines.get('async', 'n/a')} (both on the same common/ core).",
        ),
        _not_measured(
            "threads-blocking", "Compatibility: threads work with existing blocking code.",
            "A load test of two chat servers calls no third-party blocking library.",
        ),
        _not_measured("threads-libraries", "Wide library support.", "Not a property of a run."),
        gil(probes.get("threaded"), runs["threaded"]),
        thread_memory(t, a),
        many_threads_performance(runs, t),
        _not_measured(
            "threads-shared-state", "Shared state needs synchronization: complexity.",
            f"Context only: receivers saw {shown(t['seq_failures'], '{:.0f}')} seq gaps or "
            f"duplicates on the threaded server, {shown(a['seq_failures'], '{:.0f}')} on the async "
            "server (correctness, not complexity).",
        ),
        thousands_of_tasks(runs["async"], a),
        scalability(runs),
        more_requests_less_time(runs, t, a),
        true_parallelism(probes.get("async"), a),
        _not_measured("asyncio-shared-state", "Simpler shared state (locks, queues).",
                      "Not a property of a run."),
        _not_measured("asyncio-learning-curve", "Learning curve.", "Not a property of a run."),
        _not_measured(
            "asyncio-blocking", "Incompatibility with blocking libraries.",
            "Context only: p99 event-loop lag of the async server at its last good step "
            f"{shown(_last_ok_lag(runs['async']), '{:.1f} ms')} (anything blocking the loop "
            "would show here).",
        ),
    ]  # fmt: skip


def _not_measured(key, claim, why) -> dict:
    return _row(key, claim, "—", "—", NOT_MEASURED, why)


def _last_ok_lag(run: dict) -> float | None:
    r = figures.row(run, run["limit"]["last_ok_step"])
    return r.loop_lag_p99_ms if r else None


def gil(probe: dict | None, run: dict) -> dict:
    claim = (
        "GIL: only one thread runs Python bytecode at a time, so threads may not use "
        "multi-core processors fully."
    )
    measurement = (
        "CPU of the threaded server (cores) in the unpinned probe, where it could use every CPU; "
        "machine CPU at the same time."
    )
    rule = (
        f"> {ONE_CORE} cores: not supported (it used more than one core); "
        f">= {WHOLE_CORE} cores while the machine was < {MACHINE_SPARE:.0f}% busy: supported "
        "(stuck at one core with a core free); otherwise not measured (it never needed a core)."
    )
    r = _probe_row(probe)
    if r is None:
        why = "no unpinned probe in this profile"
        if run["pinning"]["server_cpu"] is not None:
            why += "; every step pinned the server to one CPU, so it could not exceed one core"
        return _row("threads-gil", claim, measurement, rule, NOT_MEASURED, why)
    peak, mean, machine = r.server_cpu_cores_max, r.server_cpu_cores, r.machine_cpu_mean
    measured = (
        f"{r.users_target} users: server CPU mean {shown(mean, '{:.2f}')} cores, peak (3 s) "
        f"{shown(peak, '{:.2f}')}; machine {shown(machine, '{:.0f}')}% busy"
    )
    if peak is not None and peak > ONE_CORE:
        verdict = NOT_SUPPORTED
    elif (
        mean is not None and mean >= WHOLE_CORE and machine is not None and machine < MACHINE_SPARE
    ):
        verdict = SUPPORTED
    else:
        verdict = NOT_MEASURED
        measured += " — the server never needed a whole core, so a one-core cap was not tested"
    return _row("threads-gil", claim, measurement, rule, verdict, measured)


def thread_memory(t: dict, a: dict) -> dict:
    claim = "Resource overhead: each thread needs its own stack, so memory grows with threads."
    measurement = (
        "Resident memory per connection (slope of RSS over connections), threaded vs async; "
        "threads per connection."
    )
    rule = (
        f"threaded KiB/connection >= {MEMORY_RATIO} x async and >= "
        f"{ONE_THREAD_PER_CONNECTION} threads/connection: supported; else not supported."
    )
    tk, ak, tt = t["kib_per_connection"], a["kib_per_connection"], t["threads_per_connection"]
    if tk is None or ak is None or tt is None or ak <= 0:
        return _row("threads-memory", claim, measurement, rule, NOT_MEASURED, "too few connections")
    ratio = tk / ak
    verdict = (
        SUPPORTED if ratio >= MEMORY_RATIO and tt >= ONE_THREAD_PER_CONNECTION else NOT_SUPPORTED
    )
    measured = (
        f"threaded {tk:.1f} KiB/connection ({tt:.2f} threads/connection, virtual "
        f"{shown(t['virtual_kib_per_connection'], '{:.0f}')} KiB), async {ak:.1f} KiB/connection "
        f"({shown(a['threads_per_connection'], '{:.3f}')} threads/connection): ratio {ratio:.2f}"
    )
    return _row("threads-memory", claim, measurement, rule, verdict, measured)


def many_threads_performance(runs: dict, t: dict) -> dict:
    claim = "With a large number of threads, performance suffers."
    measurement = "Limit in users (threaded vs async); p99 latency at the largest step both served."
    rule = (
        f"{BRACKETS} threads broke at a load async held, or threaded's p99 at the largest "
        f"common ok step is >= {LATENCY_RATIO} x async's and >= {LATENCY_FLOOR_MS:.0f} ms more: "
        "supported; async broke at a load threads held, or both broke in the same bracket: not "
        "supported at the thread counts reached; brackets that overlap otherwise: undecided."
    )
    tl, al = runs["threaded"]["limit"], runs["async"]["limit"]
    notes = [f"threaded limit: {_limit(tl)}; async limit: {_limit(al)}"]
    order = which_held_more(tl, al)
    verdict = {"async": SUPPORTED, "overlap": UNDECIDED}.get(order or "", NOT_SUPPORTED)
    common = figures.largest_common_step(runs["threaded"], runs["async"])
    if common:
        rt, ra = common
        pt, pa = figures.p99(rt), figures.p99(ra)
        notes.append(
            f"at {rt.users_target} users ({shown(rt.threads, '{:.0f}')} threads): p99 threaded "
            f"{shown(pt, '{:.0f} ms')}, async {shown(pa, '{:.0f} ms')}"
        )
        if (
            pt is not None
            and pa is not None
            and pt >= LATENCY_RATIO * max(pa, 1.0)
            and pt - pa >= LATENCY_FLOOR_MS
        ):
            verdict = SUPPORTED
    elif not tl["reached"]:
        return _row("threads-many", claim, measurement, rule, NOT_MEASURED, "; ".join(notes))
    if verdict == NOT_SUPPORTED:
        notes.append(f"up to {shown(t['max_threads'], '{:.0f}')} threads")
    return _row("threads-many", claim, measurement, rule, verdict, "; ".join(notes))


def thousands_of_tasks(run: dict, a: dict) -> dict:
    claim = "Efficiency: one event loop handles thousands of concurrent tasks."
    measurement = "Connections the async server held in a valid step within the SLO."
    rule = (
        f">= {THOUSANDS} connections in an ok step: supported; limit reached below "
        f"{THOUSANDS}: not supported; fewer tested: not measured."
    )
    ok = a["last_ok"]
    held = ok["connections"] if ok else None
    measured = (
        f"async held {shown(held, '{:.0f}')} connections within the SLO ({_limit(run['limit'])})"
    )
    if held is not None and held >= THOUSANDS:
        verdict = SUPPORTED
    elif run["limit"]["reached"] and run["limit"]["users"] <= THOUSANDS:
        verdict = NOT_SUPPORTED
    else:
        verdict = NOT_MEASURED
    return _row("asyncio-thousands", claim, measurement, rule, verdict, measured)


def scalability(runs: dict) -> dict:
    claim = "High scalability: asyncio scales further than threads."
    measurement = "Users at each server's limit (same steps, same scenario)."
    rule = (
        f"{BRACKETS} async held a load at or above the one that broke threads: supported; "
        "threads held a load at or above the one that broke async, or both broke in the same "
        "bracket: not supported; brackets that overlap otherwise: undecided; neither reached "
        "a limit: not measured."
    )
    tl, al = runs["threaded"]["limit"], runs["async"]["limit"]
    measured = f"threaded: {_limit(tl)}; async: {_limit(al)}"
    verdict = {
        "async": SUPPORTED,
        "threaded": NOT_SUPPORTED,
        "same": NOT_SUPPORTED,
        "overlap": UNDECIDED,
    }.get(which_held_more(tl, al) or "", NOT_MEASURED)
    return _row("asyncio-scalability", claim, measurement, rule, verdict, measured)


BRACKETS = "Each server's limit lies between its last ok step and the step that broke it."


def which_held_more(tl: dict, al: dict) -> str | None:
    """Which server held more users, from each one's bracket (last ok step, limit].

    ``"async"`` when async's last ok step is at or above threaded's limit (async
    held a load that broke threads), ``"threaded"`` the other way round,
    ``"same"`` when both broke in the same bracket, ``"overlap"`` when the
    brackets overlap otherwise (the run cannot order the two), None when
    neither side's limit was reached above the other's last ok step.
    """
    t_ok, a_ok = tl["last_ok_users"] or 0, al["last_ok_users"] or 0
    if tl["reached"] and a_ok >= tl["users"]:
        return "async"
    if al["reached"] and t_ok >= al["users"]:
        return "threaded"
    if not (tl["reached"] and al["reached"]):
        return None
    if (t_ok, tl["users"]) == (a_ok, al["users"]):
        return "same"
    return "overlap"


def more_requests_less_time(runs: dict, t: dict, a: dict) -> dict:
    claim = "Asyncio handles more requests in less time than threads."
    measurement = (
        "If both servers reached a limit: deliveries/s at the last ok step. Otherwise (the "
        "offered load sets the rate): server CPU microseconds per delivery at the largest step "
        "both served."
    )
    rule = (
        f"async better by more than {SAME_WITHIN:.0%}: supported; within {SAME_WITHIN:.0%} or "
        f"worse: not supported. {BRACKETS} When the two brackets overlap (and differ), the "
        "last ok steps do not order the two servers' rates: undecided."
    )
    tl, al = runs["threaded"]["limit"], runs["async"]["limit"]
    if tl["reached"] and al["reached"] and t["last_ok"] and a["last_ok"]:
        td, ad = t["last_ok"]["deliveries_per_s"], a["last_ok"]["deliveries_per_s"]
        if td and ad:
            ratio = ad / td
            verdict = SUPPORTED if ratio > 1 + SAME_WITHIN else NOT_SUPPORTED
            measured = (
                f"deliveries/s at the last ok step: async {ad:,.0f}, threaded {td:,.0f} "
                f"(ratio {ratio:.2f})"
            )
            if which_held_more(tl, al) == "overlap":
                verdict = UNDECIDED
                measured += f"; the brackets overlap ({_bracket(tl)} and {_bracket(al)})"
            return _row("asyncio-throughput", claim, measurement, rule, verdict, measured)
    common = figures.largest_common_step(runs["threaded"], runs["async"])
    if not common:
        return _row(
            "asyncio-throughput", claim, measurement, rule, NOT_MEASURED, "no common ok step"
        )
    rt, ra = common
    ut, ua = figures.cpu_us_per_delivery(rt), figures.cpu_us_per_delivery(ra)
    if not ut or not ua:
        return _row("asyncio-throughput", claim, measurement, rule, NOT_MEASURED, "no deliveries")
    ratio = ua / ut
    verdict = SUPPORTED if ratio < 1 - SAME_WITHIN else NOT_SUPPORTED
    measured = (
        f"at {rt.users_target} users: async {ua:.1f} µs of CPU per delivery, threaded "
        f"{ut:.1f} µs (ratio {ratio:.2f}); deliveries/s async {ra.deliveries_per_s:,.0f}, "
        f"threaded {rt.deliveries_per_s:,.0f}"
    )
    return _row("asyncio-throughput", claim, measurement, rule, verdict, measured)


def true_parallelism(probe: dict | None, a: dict) -> dict:
    claim = "True parallelism: asyncio runs coroutines in parallel."
    measurement = (
        "Share of the async server's CPU time spent in its busiest thread (every step), and its "
        "CPU in the unpinned probe."
    )
    rule = (
        f"busiest thread >= {BUSIEST_THREAD:.0%} of the CPU time, or probe CPU <= {ONE_CORE} "
        f"cores while the machine had spare CPU: not supported; probe CPU > {ONE_CORE} cores "
        "with no dominant thread: supported."
    )
    share = a["busiest_thread_share"]
    r = _probe_row(probe)
    notes = [f"busiest thread did {shown(share, '{:.0%}')} of the server's CPU time"]
    if r is not None:
        notes.append(
            f"probe: {shown(r.server_cpu_cores_max, '{:.2f}')} cores peak with the machine "
            f"{shown(r.machine_cpu_mean, '{:.0f}')}% busy"
        )
    if share is not None and share >= BUSIEST_THREAD:
        verdict = NOT_SUPPORTED
    elif r is not None and (r.server_cpu_cores_max or 0) > ONE_CORE:
        verdict = SUPPORTED
    elif r is not None and r.machine_cpu_mean is not None and r.machine_cpu_mean < MACHINE_SPARE:
        verdict = NOT_SUPPORTED
    else:
        verdict = NOT_MEASURED
    return _row("asyncio-parallelism", claim, measurement, rule, verdict, "; ".join(notes))


def _probe_row(probe: dict | None) -> StepRow | None:
    if not probe or not probe.get("steps"):
        return None
    return probe["steps"][-1]


def _bracket(limit: dict) -> str:
    return f"{limit['last_ok_users']}-{limit['users']} users"


def _limit(limit: dict) -> str:
    if limit["reached"]:
        below = limit["last_ok_users"]
        return f"{limit['users']} users ({limit['criterion']}), " + (
            f"last ok step {below} users" if below else "no ok step"
        )
    return f"{limit['criterion']}, last ok step {limit['last_ok_users']} users"
