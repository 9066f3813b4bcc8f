"""The CPU-bound scenario: every say runs pure-Python work first, nothing pinned.

Each server runs with ``--say-cpu-ms`` :data:`SAY_CPU_MS` (a content filter
that uses that much of its thread's CPU per say, holding the GIL) and no CPU
budget, with nothing pinned: the server may use every CPU of the machine.
Few users (rooms of :data:`ROOM_SIZE`, each saying something every
:data:`SAY_EVERY` s) so that Locust needs little CPU, and a say rate that
rises step by step (:data:`LEVELS` users) from well under one core's worth of
filtering to :data:`TOP_DEMAND` cores' worth, until the server saturates
(two steps over the SLO end the run, as in ``make compare``).

Each step reads the server's exact CPU (the sum of its threads' time on a CPU,
from ``/proc/PID/task/*/schedstat``), the share of it in the busiest thread,
says received and deliveries/s, and the machine's CPU (mean over the step
after its ramp): did the threaded server ever use more than one core while
the machine had a second one free?
"""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.compare import runner
from loadtest.compare.steps import mean_known

SAY_CPU_MS = 10.0
SAY_EVERY = 0.25  # s: 4 says/s per user, under the servers' 20/s rate limit
ROOM_SIZE = 5
LEVELS = (10, 20, 35, 50, 70)  # users: 40 .. 280 says/s, 0.4 .. 2.8 cores of filtering
HOLD_S = 15.0
WINDOW_S = 10.0
KINDS = ("threaded", "async")


def demand_cores(users: int) -> float:
    """Cores of filtering the offered says need: says/s x CPU per say."""
    return users / SAY_EVERY * SAY_CPU_MS / 1000


TOP_DEMAND = demand_cores(LEVELS[-1])


def locust_args() -> list[str]:
    return ["--say-every", f"{SAY_EVERY:g}", "--room-size", str(ROOM_SIZE)]


def _machine_cpu(out: Path, result: dict) -> dict[int, float | None]:
    """Machine CPU (% of all CPUs) of each step, the mean of its samples after the ramp.

    Over the whole hold rather than the judged window: a step cut short because the
    server stopped answering /metrics (the async server's metrics are served by its
    busy loop) may have a window too short to hold a sample.
    """
    path = out / f"{result['name']}-samples.jsonl"
    if not path.exists():
        return {}
    samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        row.index: mean_known(
            [s.get("machine_cpu") for s in samples if row.ramp_end + 1 <= s["t"] <= row.end]
        )
        for row in result["steps"]
    }


def run(options: runner.RunOptions, *, levels: tuple[int, ...] = LEVELS) -> dict:
    """Step each server through ``levels`` unpinned, without a CPU budget."""
    runs = {}
    for kind in KINDS:
        runs[kind] = runner.run_server(
            kind,
            options,
            levels=list(levels),
            pin=False,
            budget=False,
            tag="-cpu",
            server_args=["--say-cpu-ms", f"{SAY_CPU_MS:g}"],
        )
    machine = {kind: _machine_cpu(options.out_dir, result) for kind, result in runs.items()}
    points = [
        {
            "server": kind,
            "users": row.users_target,
            "says_per_s_offered": row.users_target / SAY_EVERY,
            "demand_cores": demand_cores(row.users_target),
            "says_per_s": row.received_per_s,
            "deliveries_per_s": row.deliveries_per_s,
            "cpu_cores_exact": row.cpu_cores_exact,
            "cpu_cores_peak": row.server_cpu_cores_max,
            "busiest_thread_share": row.busiest_thread_share,
            "threads": row.threads,
            "machine_cpu_mean": machine[kind].get(row.index),
            "locust_cpu_mean": row.locust_cpu_mean,
            "fanout_p99_ms": row.locust_p99_ms or row.latency_p99_ms,
            "outcome": row.outcome,
            "reason": row.reason,
        }
        for kind, result in runs.items()
        for row in result["steps"]
    ]
    return {
        "say_cpu_ms": SAY_CPU_MS,
        "say_every": SAY_EVERY,
        "room_size": ROOM_SIZE,
        "levels": list(levels),
        "cpus": runner.pinning.cpus(),
        "points": points,
        "limits": {kind: result["limit"] for kind, result in runs.items()},
        "stop_reasons": {kind: result["stop_reason"] for kind, result in runs.items()},
        "steps": {kind: [r.to_dict() for r in result["steps"]] for kind, result in runs.items()},
    }
