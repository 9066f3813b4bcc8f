"""Find one server's limit: climb until it breaks, then narrow down on fresh servers.

1. **Climb**: one run through the profile's geometric steps
   (:meth:`~loadtest.compare.profiles.Profile.levels`), stopped by the step rules
   at the first confirmed breach.
2. **Narrow**: between the last good step and that breach, one short run at
   the geometric middle, each on a freshly started server (a breach can leave a
   server damaged: queues full, threads stuck, memory grown). Each narrowing run
   climbs as the climb did: first to the last good level, at a quarter of the spawn
   rate (:func:`base_ramp_rate`), held and judged like a step (``phase == "base"``),
   then one step at the spawn rate to the level it probes (``"narrow"``), so a
   probe meets the ramp of one step, not a connect storm from zero that no climb
   step met. A good probe raises the floor, a breached one lowers the ceiling,
   until the two are within the profile's precision. The limit is the lowest
   breached user count; the last good step is the highest good one.
3. **Probe** (profiles with ``probe_time``): a run with nothing pinned and no
   CPU budget at about the load one whole core would carry, to see how many
   cores the server uses when it may use them all.

A narrowing run that the load generator could not drive (``invalid``) or that
did not start stops the narrowing; the bracket found so far is reported. So does
one that breached at the last good level on its way (the level did not hold on a
fresh server: the machine's speed drifts), or that breached on its way up with
fewer connections than the climb held: either way the probed level was never
tested (:func:`~loadtest.compare.steps.why_not_counted`).
"""

from __future__ import annotations

import math
from dataclasses import replace

from loadtest.compare import runner
from loadtest.compare.profiles import Profile
from loadtest.compare.steps import Outcome, StepRow, why_not_counted

ONE_CORE_HEADROOM = 1.2  # the probe's load: what one whole core would carry, plus 20 %
LOCUST_HEADROOM = 0.7  # ... but no more than keeps Locust under 70 % of its CPUs
BASE_RAMP_SHARE = 0.25  # a narrowing run ramps to the last good level at 1/4 the spawn rate


def find_limit(kind: str, options: runner.RunOptions) -> dict:
    """Climb and narrow; return the climb's run with every row and the narrowed limit."""
    profile = options.profile
    run = runner.run_server(kind, options)
    climb_limit = run["limit"]
    rows = [replace(r, phase="climb") for r in run["steps"]]
    narrowing: list[dict] = []
    limit = combine(climb_limit, rows)
    while limit["narrowing"] == "open" and limit["last_ok_users"]:
        users = profile.narrowed(limit["last_ok_users"], limit["users"])
        if users is None:
            break
        runner.say(
            options,
            f"{kind}: narrowing between {limit['last_ok_users']} and {limit['users']} users: "
            f"{users}, on a fresh server",
        )
        base = limit["last_ok_users"]
        probe_run = runner.run_server(
            kind, options, levels=[base, users], tag=f"-narrow-{users}",
            first_spawn_rate=base_ramp_rate(profile, base),
        )  # fmt: skip
        narrowing.append(_about(probe_run))
        if not probe_run["steps"]:
            break  # Locust did not start: keep the bracket found so far
        for row in probe_run["steps"]:
            phase = "base" if row.users_target == base else "narrow"
            row = replace(row, index=len(rows), phase=phase)
            rows.append(say_if_not_counted(row, climb_limit))
        limit = combine(climb_limit, rows)
    return {**run, "steps": rows, "limit": limit, "narrowing": narrowing}


def base_ramp_rate(profile: Profile, base: int) -> float:
    """Users/s of a narrowing run's ramp from zero to ``base``: a quarter of the profile's
    spawn rate (the climb reached ``base`` step by step, each step's new users arriving
    on a server that held the others), but the ramp lasts at most four steps' hold."""
    gentle = max(profile.spawn_rate * BASE_RAMP_SHARE, base / (4 * profile.step_time))
    return min(profile.spawn_rate, gentle)


def say_if_not_counted(row: StepRow, climb_limit: dict) -> StepRow:
    """``row``, its reason saying why if it is not counted (:func:`why_not_counted`)."""
    why = why_not_counted(row, climb_limit)
    if why is None or "not counted" in row.reason:
        return row
    return replace(row, reason=f"{row.reason}; not counted: {why}")


def combine(climb_limit: dict, rows: list[StepRow]) -> dict:
    """The limit after the climb's verdict and the narrowing runs' rows (``phase`` "base"
    and "narrow"), in the order they ran.

    The limit is the lowest breached user count, the last good step the highest
    good one below it. ``narrowing`` says whether more narrowing may help
    (``open``), or an invalid narrowing step stopped it (``stopped``).
    """
    limit = {**climb_limit, "narrowing": "open", "bracket_ratio": None}
    if not limit["reached"]:
        limit["narrowing"] = "none"
        return limit
    for row in rows:
        if row.phase not in ("base", "narrow"):
            continue
        if why_not_counted(row, climb_limit):
            limit["narrowing"] = "stopped"  # the level it was to probe was never tested
            break
        if row.phase == "base" and row.outcome != Outcome.INVALID:
            continue  # the last good level held again (or only briefly breached)
        if row.outcome == Outcome.OK and row.users_target > (limit["last_ok_users"] or 0):
            limit.update(last_ok_users=row.users_target, last_ok_step=row.index)
        elif row.outcome == Outcome.LIMIT and row.users_target < limit["users"]:
            limit.update(users=row.users_target, criterion=row.reason, step=row.index)
        elif row.outcome == Outcome.INVALID:
            limit["narrowing"] = "stopped"  # the load generator, not the server, gave out
            break
    if limit["last_ok_users"]:
        limit["bracket_ratio"] = limit["users"] / limit["last_ok_users"]
    return limit


def probe(kind: str, options: runner.RunOptions, run: dict) -> dict | None:
    """The unpinned, unbudgeted probe at about one whole core's load, capped by what
    Locust can drive (from its measured CPU per delivery in the climb)."""
    profile = options.profile
    base = run["limit"]["last_ok_users"] or profile.levels()[0]
    budget = run.get("server_cpus") or 1.0
    users = math.ceil(base / budget * ONE_CORE_HEADROOM)
    why = f"{base} good users at {budget:g} CPU, scaled to one core + {ONE_CORE_HEADROOM - 1:.0%}"
    cap = locust_capacity(run, run["pinning"].get("locust_processes", 1))
    if cap is not None and cap < users:
        users, why = cap, f"what Locust can drive at {LOCUST_HEADROOM:.0%} of its CPUs"
    users = max(1, min(profile.maximum, users))
    runner.say(options, f"{kind}: unpinned probe, {users} users ({why}), {profile.probe_time:g} s")
    return runner.run_server(
        kind, options, levels=[users], step_time=profile.probe_time,
        window=round(profile.probe_time * 2 / 3, 1), pin=False, budget=False, tag="-probe",
    )  # fmt: skip


def locust_capacity(run: dict, processes: int) -> int | None:
    """Users that would keep Locust at ``LOCUST_HEADROOM`` of its CPUs, extrapolated
    from the climb's good steps (Locust CPU per user is close to linear)."""
    per_user = [
        r.locust_cpu_mean / 100 / r.users_target
        for r in run["steps"]
        if r.outcome == Outcome.OK and r.locust_cpu_mean and r.users_target
    ]
    if not per_user:
        return None
    return int(LOCUST_HEADROOM * processes / max(per_user))


def _about(run: dict) -> dict:
    """What the report keeps of a narrowing run besides its row."""
    keys = ("name", "levels", "stop_reason", "locust_exit", "server_exit", "server_log_tail",
            "locust_failures", "files", "window", "step_time", "first_spawn_rate",
            "wall")  # fmt: skip
    return {k: run.get(k) for k in keys}
