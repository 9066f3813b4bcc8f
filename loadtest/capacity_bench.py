"""Benchmark (not a test): what does ONE Locust process cost, and how much can it generate?

    python -m loadtest.capacity_bench cost     # Locust CPU µs per delivered message
    python -m loadtest.capacity_bench fanout   # receptions/s before Locust's CPU passes 90 %
    python -m loadtest.capacity_bench idle     # concurrent idle users one process holds
    python -m loadtest.capacity_bench all      # cost, then fanout (make loadtest-capacity)

Each mode is a run of the comparison runner (:func:`loadtest.compare.runner.run_server`)
with the Locust capacity profile (:func:`loadtest.compare.profiles.locust_capacity`):
a fresh server (async by default; ``--server threaded``) on CPU 0 and one
Locust process running this project's locustfile on CPU 1 (where ``taskset``
exists and there are two CPUs or more), one sample per second, each step
judged on its last seconds once the server holds its users. The profile judges
Locust, not the server: latency and failures never end the run, and the first
step in which Locust averages more than 90 % of a core does.

``cost`` is one step of the ``chat`` scenario at a fixed user count (4,000 by
default), held ``--settle`` + ``--window`` seconds and judged on the last
``--window`` (20 s by default): the CPU of the Locust process (psutil: user +
system) divided by the messages the server delivered in that window
(``chat_messages_delivered_total``) is the cost of one received message,
everything included (the receive path, the tasks that send, Locust's own stats
and reporting). The server's CPU is its threads' (``/proc/PID/task/*/schedstat``).
``--repeat N`` runs it N times, each with a fresh server and Locust, and
reports the spread. The machine's load average before and after each run and
the CPU other processes used in its window are recorded: other work on a
shared machine slows Locust down and shows up as a higher figure.

``fanout`` and ``idle`` step the users up (``--fanout-step`` … ``--fanout-max``,
``--idle-step`` … ``--idle-max``), each step judged on its last
``--step-window`` seconds.

Results are printed and written to ``reports/capacity-<mode>-<timestamp>/capacity.json``,
beside the runner's raw files (``<server>-samples.jsonl``, Locust's CSVs and log,
the server's log).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest import machine
from loadtest.compare import figures, runner
from loadtest.compare.profiles import LOCUST_CAPACITY_RULES, Profile, locust_capacity
from loadtest.compare.steps import StepRow
from loadtest.serverproc import PROJECT_ROOT

SATURATED = LOCUST_CAPACITY_RULES.locust_cpu_saturated  # % of one core


@dataclass
class CostRun:
    """One steady window of the ``cost`` mode."""

    users: float
    window_s: float
    deliveries: float
    locust_cpu_s: float
    server_cpu_s: float
    failures: float
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    other_cpu_cores: float | None = None  # other processes on the machine, in the window

    @classmethod
    def from_row(
        cls, row: StepRow, before: tuple[float, float, float], after: tuple[float, float, float]
    ) -> CostRun:
        seconds = row.window_s
        server_cores = row.cpu_cores_exact
        if server_cores is None:
            server_cores = row.server_cpu_cores or 0.0
        return cls(
            users=row.users or 0.0,
            window_s=seconds,
            deliveries=(row.deliveries_per_s or 0.0) * seconds,
            locust_cpu_s=(row.locust_cpu_mean or 0.0) / 100 * seconds,
            server_cpu_s=server_cores * seconds,
            failures=row.failures,
            loadavg_before=before,
            loadavg_after=after,
            other_cpu_cores=row.other_cpu_cores,
        )

    @property
    def locust_us_per_delivery(self) -> float:
        return 1e6 * self.locust_cpu_s / self.deliveries if self.deliveries else float("nan")

    @property
    def server_us_per_delivery(self) -> float:
        return 1e6 * self.server_cpu_s / self.deliveries if self.deliveries else float("nan")

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "deliveries_per_s": self.deliveries / self.window_s,
            "locust_cpu_percent": 100.0 * self.locust_cpu_s / self.window_s,
            "server_cpu_percent": 100.0 * self.server_cpu_s / self.window_s,
            "locust_us_per_delivery": self.locust_us_per_delivery,
            "server_us_per_delivery": self.server_us_per_delivery,
        }


def run_profile(
    args: argparse.Namespace, out_dir: Path, prof: Profile, scenario: str, locust_args: list[str]
) -> dict:
    """One run of the comparison runner through ``prof``: a fresh server and one Locust."""
    options = runner.RunOptions(
        prof, scenario, out_dir, runner.Pinning.one_locust(),
        locust_args=[*locust_args, *args.locust_arg],
        server_args=["--max-connections", str(max(prof.levels()) + 1000)],
        label="capacity",
    )  # fmt: skip
    return runner.run_server(args.server, options)


# -- cost: µs of Locust CPU per delivered message ---------------------------------------


def run_cost(args: argparse.Namespace, out_dir: Path) -> list[CostRun]:
    prof = locust_capacity(
        "capacity-cost", [args.users], step_time=args.settle + args.window, window=args.window,
        spawn_rate=args.spawn_rate,
    )  # fmt: skip
    runs: list[CostRun] = []
    for i in range(args.repeat):
        run_dir = out_dir / f"run{i + 1}"
        run_dir.mkdir(parents=True, exist_ok=True)
        before = os.getloadavg()
        result = run_profile(args, run_dir, prof, "chat", [])
        row = result["steps"][-1] if result["steps"] else None
        if row is None or not row.settled:
            raise RuntimeError(f"Locust did not hold {args.users} users; see {run_dir}")
        run = CostRun.from_row(row, before, os.getloadavg())
        runs.append(run)
        print(
            f"run {i + 1}: {run.users:.0f} users, {run.deliveries / run.window_s:,.0f} "
            f"deliveries/s; Locust {run.locust_us_per_delivery:.1f} µs/delivery "
            f"({100 * run.locust_cpu_s / run.window_s:.0f} % CPU), server "
            f"{run.server_us_per_delivery:.1f} µs/delivery; failures {run.failures:.0f}; "
            f"load average {run.loadavg_before[0]:.2f} -> {run.loadavg_after[0]:.2f}",
            flush=True,
        )
    return runs


def summarize_cost(runs: list[CostRun]) -> str:
    figures_ = [r.locust_us_per_delivery for r in runs]
    text = (
        f"cost: Locust {statistics.median(figures_):.1f} µs of CPU per delivered message "
        f"(median of {len(runs)}: {', '.join(f'{f:.1f}' for f in figures_)})"
    )
    if runs:
        rate = statistics.median(r.deliveries / r.window_s for r in runs)
        server = statistics.median(r.server_us_per_delivery for r in runs)
        text += f" at {rate:,.0f} deliveries/s; server {server:.1f} µs per delivery"
    return text


# -- fanout and idle: step shape until saturation ----------------------------------------


def run_steps(mode: str, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    """Step the users up until Locust saturates; one capacity.json row per step."""
    if mode == "idle":
        start, step, top, step_time, spawn_rate = (
            args.idle_step, args.idle_step, args.idle_max, 25.0, 250.0
        )  # fmt: skip
        scenario, locust_args = "idle", ["--room-size", "25"]
    else:
        start, step, top, step_time, spawn_rate = (
            args.fanout_step, args.fanout_step, args.fanout_max, 20.0, 200.0
        )  # fmt: skip
        scenario = "chat"
        locust_args = ["--room-size", str(args.room_size), "--say-every", str(args.say_every)]
    levels = list(range(start, top + 1, step))
    step_time = args.step_time or step_time
    prof = locust_capacity(f"capacity-{mode}", levels, step_time, args.step_window, spawn_rate)
    result = run_profile(args, out_dir, prof, scenario, locust_args)
    rows = [step_figures(row, fanout=scenario == "chat") for row in result["steps"]]
    for row in rows:
        print(
            f"users {row['users']:6.0f}/{row['users_target']:<6d} "
            f"locust CPU {row['locust_cpu_percent']:5.1f}% RSS {row['locust_rss_mib']:5.0f} MiB "
            f"server CPU {row['server_cpu_percent']:5.1f}% "
            f"receptions {row['receptions_per_s']:8.0f}/s "
            f"({row['locust_us_per_delivery']:5.1f} µs each, avg fanout "
            f"{row['fanout_avg_ms']:6.1f} ms) failures {row['failures']:.0f}",
            flush=True,
        )
    return rows


def step_figures(row: StepRow, fanout: bool) -> dict:
    """A step as capacity.json keeps it (0 where the samples gave no figure)."""
    server_cores = row.cpu_cores_exact if row.cpu_cores_exact is not None else row.server_cpu_cores
    return {
        "users_target": row.users_target,
        "users": row.users or 0.0,
        "server_connections": row.connections or 0.0,
        "locust_cpu_percent": row.locust_cpu_mean or 0.0,
        "server_cpu_percent": 100.0 * (server_cores or 0.0),
        "locust_rss_mib": (row.locust_rss_bytes or 0) / 2**20,
        "receptions_per_s": row.fanout_receptions_per_s or 0.0,
        "deliveries_per_s": row.deliveries_per_s or 0.0,
        "locust_us_per_delivery": figures.locust_us_per_delivery(row) or 0.0,
        "fanout_avg_ms": (row.latency_mean_ms or 0.0) if fanout else 0.0,
        "failures": row.failures,
        "outcome": row.outcome,
        "reason": row.reason,
    }


def summarize_steps(mode: str, server: str, steps: list[dict]) -> str:
    ok = [
        s
        for s in steps
        if s["locust_cpu_percent"] <= SATURATED
        and s["failures"] == 0
        and s["users"] >= s["users_target"]
    ]
    if mode == "idle":
        best = max((s["users"] for s in ok), default=0)
        return (
            f"idle: one Locust process held {best:.0f} concurrent idle users "
            f"(no failure, CPU <= 90%) against the {server} server"
        )
    best = max(ok, key=lambda s: s["receptions_per_s"], default=None)
    over = next((s for s in steps if s["locust_cpu_percent"] > SATURATED), None)
    text = "fanout: "
    if best:
        text += (
            f"{best['receptions_per_s']:.0f} receptions/s at {best['locust_cpu_percent']:.0f}% "
            f"CPU ({best['users']:.0f} users, {best['locust_us_per_delivery']:.1f} µs each, "
            f"avg fanout {best['fanout_avg_ms']:.1f} ms)"
        )
    else:
        text += "no step below 90 % CPU without failures"
    if over:
        text += (
            f"; above 90% CPU at {over['receptions_per_s']:.0f}/s "
            f"({over['users_target']} users, avg fanout {over['fanout_avg_ms']:.1f} ms)"
        )
    return text


# -- command line ------------------------------------------------------------------------


def run(mode: str, args: argparse.Namespace) -> tuple[dict, str]:
    out_dir = args.reports / f"capacity-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    pinned = runner.Pinning.one_locust()
    result: dict = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine.one_line(),
        "server": args.server,
        "pinned": {"server_cpu": pinned.server_cpu, "locust_cpu": int(pinned.locust_cpus)}
        if pinned.server_cpu is not None
        else None,
        "locust_args": args.locust_arg,
        "report_dir": str(out_dir),
    }
    if mode == "cost":
        runs = run_cost(args, out_dir)
        result.update(users=args.users, window_s=args.window, runs=[r.as_dict() for r in runs])
        summary = summarize_cost(runs)
    else:
        steps = run_steps(mode, args, out_dir)
        result["steps"] = steps
        summary = summarize_steps(mode, args.server, steps)
    result["summary"] = summary
    (out_dir / "capacity.json").write_text(json.dumps(result, indent=2))
    return result, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["cost", "fanout", "idle", "all"])
    parser.add_argument("--server", choices=["async", "threaded"], default="async")
    cost = parser.add_argument_group("cost")
    cost.add_argument("--users", type=int, default=4000, help="chat users (default 4000)")
    cost.add_argument("--spawn-rate", type=float, default=200.0)
    cost.add_argument("--settle", type=float, default=10.0, help="seconds after the ramp")
    cost.add_argument("--window", type=float, default=20.0, help="steady seconds measured")
    cost.add_argument("--repeat", type=int, default=1, help="fresh runs, for the spread")
    steps = parser.add_argument_group("fanout and idle")
    steps.add_argument("--idle-step", type=int, default=3800)
    steps.add_argument("--idle-max", type=int, default=19000)
    steps.add_argument("--fanout-step", type=int, default=500)
    steps.add_argument("--fanout-max", type=int, default=6000)
    steps.add_argument("--room-size", type=int, default=50)
    steps.add_argument("--say-every", type=float, default=2.0)
    steps.add_argument("--step-window", type=float, default=8.0, help="steady seconds/step")
    steps.add_argument(
        "--step-time", type=float, help="seconds each step is held (default 20; idle 25)"
    )
    parser.add_argument("--reports", type=Path, default=PROJECT_ROOT / "reports")
    parser.add_argument(
        "--locust-arg",
        action="append",
        default=[],
        help="extra Locust flag (repeatable, e.g. --locust-arg=--say-every=2)",
    )
    args = parser.parse_args(argv)
    modes = ["cost", "fanout"] if args.mode == "all" else [args.mode]
    summaries = []
    for mode in modes:
        result, summary = run(mode, args)
        summaries.append(summary)
        print(summary, flush=True)
        print(f"details: {result['report_dir']}/capacity.json", flush=True)
    print("\n".join(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
