"""Verdicts on the article's claims from the claims scenarios and the code facts.

Same form as :mod:`loadtest.compare.claims` (whose thresholds these rules
reuse, and whose rows they complete): each function names the measurement,
states its rule, and computes the verdict from the figures. Every row says
what tested it (``tested_by``); rows from code facts say that they are facts
about the code, not a run's measurement.
"""

from __future__ import annotations

from loadtest.claims import sharedstate
from loadtest.compare import claims as compare_claims
from loadtest.compare.claims import (
    LATENCY_FLOOR_MS,
    LATENCY_RATIO,
    MACHINE_SPARE,
    NOT_MEASURED,
    NOT_SUPPORTED,
    ONE_CORE,
    SUPPORTED,
    UNDECIDED,
)

MAX_FAILURE_RATIO = 0.01

THRESHOLDS = {
    **compare_claims.THRESHOLDS,
    "MAX_FAILURE_RATIO (blocking scenario)": MAX_FAILURE_RATIO,
}

BLOCKING = "blocking scenario (make claims)"
CPU_BOUND = "CPU-bound scenario (make claims)"
CODE = "code facts (counted from the source, not a measurement)"
SHARED = "shared-state experiment (make claims) and code facts"


def _row(key, claim, tested_by, measurement, rule, verdict, measured) -> dict:
    side, kind = compare_claims.SIDES[key]
    return {
        "key": key, "side": side, "kind": kind, "claim": claim, "tested_by": tested_by,
        "measurement": measurement, "rule": rule, "measured": measured, "verdict": verdict,
    }  # fmt: skip


def _f(value, fmt="{:.0f}") -> str:
    return "n/a" if value is None else fmt.format(value)


# -- blocking libraries ----------------------------------------------------------------


def unaffected(point: dict, base_ms: float | None) -> bool:
    """A (variant, N) point whose bystanders paid nothing for others' blocking calls:
    an ok step, failures within bounds, and the bystander probe's ping p99 at most
    LATENCY_RATIO x the same variant's at N = 0 plus LATENCY_FLOOR_MS."""
    ping = point.get("probe_p99_ms")
    if point.get("outcome") != "ok" or ping is None or base_ms is None:
        return False
    if (point.get("failure_ratio") or 0) > MAX_FAILURE_RATIO:
        return False
    return ping <= LATENCY_RATIO * max(base_ms, 1.0) + LATENCY_FLOOR_MS


UNAFFECTED_RULE = (
    "a point is unaffected when its step is ok (fan-out within the SLO, failures <= "
    f"{MAX_FAILURE_RATIO:.0%}) and the ping p99 of a bystander that makes no blocking call is "
    f"at most {LATENCY_RATIO:g} x the same variant's at N = 0 + {LATENCY_FLOOR_MS:g} ms"
)


def _by_variant(result: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in sorted(result["points"], key=lambda p: p["delay_ms"]):
        out.setdefault(p["variant"], []).append(p)
    return out


def _base(points: list[dict]) -> float | None:
    return next((p.get("probe_p99_ms") for p in points if p["delay_ms"] == 0), None)


def _describe(points: list[dict]) -> str:
    return ", ".join(
        f"N={p['delay_ms']:g}: fan-out p99 {_f(p['fanout_p99_ms'])} ms, bystander ping p99 "
        f"{_f(p.get('probe_p99_ms'), '{:.1f}')} ms"
        + (f" (loop lag {_f(p['loop_lag_p99_ms'])} ms)" if p.get("loop_lag_p99_ms") else "")
        + ("" if p["outcome"] == "ok" else f" [{p['reason'] or p['outcome']}]")
        for p in points
    )


def blocking_compatibility(result: dict | None) -> dict:
    key = "threads-blocking"
    claim = "Compatibility: threads work with existing blocking code."
    measurement = (
        "Threaded server, a blocking urllib call to a moderation service answering after N ms "
        "in every say (in the sender's thread, outside chat_lock), N = 0, 5, 20, 50 ms, same "
        "chat load: bystanders' fan-out p99, and the ping p99 of a bystander that makes no call."
    )
    rule = f"every N unaffected: supported; else not supported ({UNAFFECTED_RULE})."
    points = _by_variant(result).get("threaded") if result else None
    if not points:
        return _row(key, claim, BLOCKING, measurement, rule, NOT_MEASURED, "not run")
    base = _base(points)
    ok = all(unaffected(p, base) for p in points)
    return _row(key, claim, BLOCKING, measurement, rule, SUPPORTED if ok else NOT_SUPPORTED,
                "threaded: " + _describe(points))  # fmt: skip


def blocking_incompatibility(result: dict | None) -> dict:
    key = "asyncio-blocking"
    claim = "Incompatibility with blocking libraries."
    measurement = (
        "Async server, the same blocking call on the event loop as written, at the same N and "
        "load: bystanders' fan-out p99 and event-loop lag; the threaded server at the same N as "
        "the control; the async server with the call in asyncio.to_thread for what the fix gives."
    )
    rule = (
        "the async (loop) variant affected at some N where the threaded one was not: "
        "supported; unaffected at every N: not supported; both affected at every N where "
        f"async was: not measured (the service or the machine was the limit). {UNAFFECTED_RULE}."
    )
    by = _by_variant(result) if result else {}
    loop, threaded = by.get("async"), by.get("threaded")
    if not loop or not threaded:
        return _row(key, claim, BLOCKING, measurement, rule, NOT_MEASURED, "not run")
    base_loop, base_thr = _base(loop), _base(threaded)
    control = {p["delay_ms"]: unaffected(p, base_thr) for p in threaded}
    hurt = [p for p in loop if not unaffected(p, base_loop)]
    notes = ["async on the loop: " + _describe(loop)]
    if by.get("async+thread"):
        notes.append("async with asyncio.to_thread: " + _describe(by["async+thread"]))
    if not hurt:
        verdict = NOT_SUPPORTED
    elif any(control.get(p["delay_ms"]) for p in hurt):
        verdict = SUPPORTED
        first = min(p["delay_ms"] for p in hurt if control.get(p["delay_ms"]))
        notes.insert(0, f"from N = {first:g} ms the loop's bystanders waited for others' calls")
    else:
        verdict = NOT_MEASURED
    return _row(key, claim, BLOCKING, measurement, rule, verdict, "; ".join(notes))


# -- CPU-bound work -----------------------------------------------------------------------


def _cpu_text(kind: str, points: list[dict]) -> str:
    return f"{kind}: " + ", ".join(
        f"{p['says_per_s_offered']:.0f} says/s offered ({p['demand_cores']:.1f} cores of work): "
        f"{_f(p['cpu_cores_exact'], '{:.2f}')} cores, {_f(p['deliveries_per_s'])} deliveries/s, "
        f"busiest thread {_f(p['busiest_thread_share'], '{:.0%}')}, machine "
        f"{_f(p['machine_cpu_mean'])}%"
        for p in points
    )


def _one_core_verdict(points: list[dict]) -> tuple[str, str]:
    """(verdict on "stuck at one core", what was seen): the shared rule of both CPU claims."""
    # The step that used the most CPU among those offered more than one core of work:
    loaded = [p for p in points if p["demand_cores"] > ONE_CORE and p["cpu_cores_exact"]]
    top = max(loaded, key=lambda p: p["cpu_cores_exact"], default=None)
    if top is None:
        return NOT_MEASURED, "no step offered more than one core of work"
    cores, machine = top["cpu_cores_exact"], top["machine_cpu_mean"]
    if cores > ONE_CORE:
        return "parallel", f"{cores:.2f} cores at {top['says_per_s_offered']:.0f} says/s"
    waiting = top["outcome"] != "ok"  # over the SLO or unresponsive: says were queuing
    if waiting and machine is not None and machine < MACHINE_SPARE:
        return "one core", (
            f"at most {cores:.2f} cores with {top['demand_cores']:.1f} cores of work offered, "
            f"says queuing ({top['reason'] or top['outcome']}) and the machine "
            f"{machine:.0f}% busy"
        )
    return NOT_MEASURED, f"{cores:.2f} cores, machine {_f(machine)}% busy, says not queuing"


CPU_MEASUREMENT = (
    "Each say runs {ms:g} ms of pure-Python CPU work (a content filter); nothing pinned, no CPU "
    "budget; a say rate rising step by step past one core's worth of work; exact CPU of the "
    "server's threads (/proc/PID/task/*/schedstat), its busiest thread, machine CPU."
)
CPU_RULE = (
    f"over the steps offered more than {ONE_CORE} cores of work: the server's CPU > {ONE_CORE} "
    f"cores → it ran in parallel; at most {ONE_CORE} cores while says were queuing (the step "
    f"over the SLO or unresponsive) and the machine was < {MACHINE_SPARE:.0f}% busy → stuck "
    "at one core with a core free; otherwise not measured."
)


def gil(result: dict | None) -> dict:
    key = "threads-gil"
    claim = (
        "GIL: only one thread runs Python bytecode at a time, so threads may not use "
        "multi-core processors fully."
    )
    if not result:
        return _row(key, claim, CPU_BOUND, "—", CPU_RULE, NOT_MEASURED, "not run")
    points = [p for p in result["points"] if p["server"] == "threaded"]
    seen, text = _one_core_verdict(points)
    verdict = {"one core": SUPPORTED, "parallel": NOT_SUPPORTED}.get(seen, NOT_MEASURED)
    return _row(key, claim, CPU_BOUND, CPU_MEASUREMENT.format(ms=result["say_cpu_ms"]),
                f"stuck at one core: supported; parallel: not supported. {CPU_RULE}", verdict,
                f"{text}; {_cpu_text('threaded', points)}")  # fmt: skip


def true_parallelism(result: dict | None) -> dict:
    key = "asyncio-parallelism"
    claim = "True parallelism: asyncio runs coroutines in parallel."
    if not result:
        return _row(key, claim, CPU_BOUND, "—", CPU_RULE, NOT_MEASURED, "not run")
    points = [p for p in result["points"] if p["server"] == "async"]
    seen, text = _one_core_verdict(points)
    verdict = {"one core": NOT_SUPPORTED, "parallel": SUPPORTED}.get(seen, NOT_MEASURED)
    return _row(key, claim, CPU_BOUND, CPU_MEASUREMENT.format(ms=result["say_cpu_ms"]),
                f"parallel: supported; stuck at one core: not supported. {CPU_RULE}", verdict,
                f"{text}; {_cpu_text('async', points)}")  # fmt: skip


# -- shared state and simplicity: code facts --------------------------------------------


def breakages(counts: dict | None) -> int | None:
    if not counts:
        return None
    return sum(counts.get(k) or 0 for k in sharedstate.BREAKAGES)


def _experiment_text(shared: dict) -> str:
    parts = []
    for run in shared.get("runs", []):
        label = "with chat_lock" if run["locked"] else "chat_lock a no-op"
        if "error" in run:
            parts.append(f"{label}: the experiment failed ({run['error'].strip()[-200:]})")
            continue
        counts = ", ".join(f"{k.replace('_', ' ')} {run[k]}" for k in sharedstate.BREAKAGES)
        parts.append(
            f"{label} (switch interval {run['switch_interval'] * 1000:g} ms, {run['says_sent']} "
            f"says): {counts}"
        )
    return "; ".join(parts)


def _code_text(code: dict) -> str:
    return "; ".join(
        f"{kind}: {len(c['locks'])} locks, {c['lock_sections']} critical sections, "
        f"{len(c['lock_order_rules'])} lock-order rule(s)"
        for kind, c in code.items()
    )


def shared_state_complexity(shared: dict | None, code: dict) -> dict:
    key = "threads-shared-state"
    claim = "Shared state needs synchronization: complexity."
    measurement = (
        "Experiment: the threaded server with chat_lock replaced by a no-op, 8 concurrent "
        "senders, watchers and members joining and leaving (real sockets); counted breakages. "
        "Code facts: locks, critical sections and lock-order rules per server."
    )
    rule = (
        "breakages without the lock > 0 and none with it, and the threaded server has more "
        "locks than the async one: supported; no breakage without the lock: not supported."
    )
    runs = [r for r in (shared or {}).get("runs", []) if "error" not in r]
    locked = [breakages(r) for r in runs if r["locked"]]
    unlocked = [breakages(r) for r in runs if not r["locked"]]
    measured = f"{_experiment_text(shared or {})}. Code facts: {_code_text(code)}"
    if not runs:
        return _row(key, claim, SHARED, measurement, rule, NOT_MEASURED, "not run; " + measured)
    more_locks = len(code["threaded"]["locks"]) > len(code["async"]["locks"])
    if any(unlocked) and not any(locked) and more_locks:
        verdict = SUPPORTED
    elif not any(unlocked):
        verdict = NOT_SUPPORTED
    else:
        verdict = NOT_MEASURED
    return _row(key, claim, SHARED, measurement, rule, verdict, measured)


def simpler_shared_state(code: dict) -> dict:
    key = "asyncio-shared-state"
    claim = "Simpler shared state (fewer locks, queues)."
    measurement = "Code facts: locks, critical sections and lock-order rules per server."
    rule = (
        "async has fewer locks and fewer critical sections than threaded: supported; as many "
        "or more: not supported."
    )
    t, a = code["threaded"], code["async"]
    fewer = len(a["locks"]) < len(t["locks"]) and a["lock_sections"] < t["lock_sections"]
    return _row(key, claim, CODE, measurement, rule, SUPPORTED if fewer else NOT_SUPPORTED,
                _code_text(code))  # fmt: skip


def simplicity(code: dict) -> dict:
    key = "threads-simplicity"
    claim = "Simplicity: threads are easy to understand and use."
    measurement = (
        "Code facts: non-blank lines of each server package and calls of concurrency "
        "primitives (threading/select/asyncio calls, await, async for/with); both on the "
        "same common/ core."
    )
    rule = (
        "threaded smaller on both counts: supported; larger on both: not supported; one each "
        f"way: {UNDECIDED}."
    )
    t, a = code["threaded"], code["async"]
    smaller_lines = t["lines"] < a["lines"]
    fewer_primitives = t["primitive_uses"] < a["primitive_uses"]
    if smaller_lines and fewer_primitives:
        verdict = SUPPORTED
    elif not smaller_lines and not fewer_primitives:
        verdict = NOT_SUPPORTED
    else:
        verdict = UNDECIDED
    measured = (
        f"threaded_server/ {t['lines']} lines (its own WebSocket connection and drainer: "
        f"{t['files'].get('connection.py', 0) + t['files'].get('drainer.py', 0)}), "
        f"{t['primitive_uses']} primitive calls; async_server/ {a['lines']} lines, "
        f"{a['primitive_uses']} ({a['primitives'].get('await', 0)} of them await)"
    )
    return _row(key, claim, CODE, measurement, rule, verdict, measured)


# -- what nothing here can measure --------------------------------------------------------


def unmeasurable() -> list[dict]:
    return [
        _row("threads-libraries", "Wide library support.", "nothing here",
             "—", "—", NOT_MEASURED,
             "A property of the ecosystem, not of a server or a run: it would take a survey "
             "(e.g. which of the most-downloaded PyPI clients for databases, HTTP and queues "
             "offer a blocking API, an asyncio one, or both). The blocking scenario shows "
             "only that one blocking library (urllib) works unchanged in a thread."),
        _row("asyncio-learning-curve", "Learning curve.", "nothing here", "—", "—",
             NOT_MEASURED,
             "A property of people, not of code or a run: it would take a study (e.g. time "
             "for developers new to each model to fix the same seeded bug in each server). "
             "The code facts (lines, primitives) are the nearest proxy here."),
    ]  # fmt: skip
