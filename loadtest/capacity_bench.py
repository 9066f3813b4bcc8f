"""Benchmark (not a test): what does ONE Locust process cost, and how much can it generate?

    python -m loadtest.capacity_bench cost     # Locust CPU µs per delivered message
    python -m loadtest.capacity_bench fanout   # receptions/s before Locust's CPU passes 90 %
    python -m loadtest.capacity_bench idle     # concurrent idle users one process holds
    python -m loadtest.capacity_bench all      # cost, then fanout (make loadtest-capacity)

Each mode starts a server (async by default; ``--server threaded``) and one
standalone Locust process running this project's locustfile, on loopback.
Where ``taskset`` exists and there are two CPUs or more, the server is pinned
to CPU 0 and Locust to CPU 1, so that each has its own core.

``cost`` runs the ``chat`` scenario at a fixed user count (4,000 by default),
waits for the ramp and a settling time, then reads over a steady window
(20 s by default): the CPU seconds of the Locust process (``/proc`` through
psutil: user + system) and the server's ``chat_messages_delivered_total``.
Locust CPU divided by the messages the server delivered in that window is the
cost of one received message, everything included (the receive path, the
tasks that send, Locust's own stats and reporting). ``--repeat N`` runs it N
times, each with a fresh server and Locust, and reports the spread. The
machine's load average is recorded with each run: other work on a shared
machine slows Locust down and shows up as a higher figure.

``fanout`` and ``idle`` run the step shape and sample Locust's exporter, the
server's metrics and Locust's CPU every second; each step is judged on its
last ``--window`` seconds (ramp excluded), and a step whose mean CPU passes
90 % ends the run.

Results are printed and written to ``reports/capacity-<mode>-<timestamp>/capacity.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from loadtest import pinning, prom
from loadtest.locustcmd import locust_command
from loadtest.serverproc import (
    PROJECT_ROOT,
    ServerProcess,
    free_port,
    running_server,
    stop_process,
)

LOCUST_CPU = 1  # one Locust process, on the first CPU after the server's
SATURATED = 90.0  # % of one core


@dataclass
class Step:
    users_target: int
    users: float = 0.0
    server_connections: float = 0.0
    locust_cpu_percent: float = 0.0
    server_cpu_percent: float = 0.0
    locust_rss_mib: float = 0.0
    receptions_per_s: float = 0.0
    fanout_per_s: float = 0.0
    ack_per_s: float = 0.0
    deliveries_per_s: float = 0.0
    locust_us_per_delivery: float = 0.0
    fanout_avg_ms: float = 0.0
    failures: float = 0.0
    samples: list[dict] = field(default_factory=list, repr=False)


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


def scrape(url: str) -> dict:
    """A scrape flattened by :func:`loadtest.prom.parse` (empty when nobody answers)."""
    return prom.scrape(url) or {}


FAILURES = "locust_failures_total{name="  # the key prefix of Locust's failures, per name
FANOUT_SUM, FANOUT_COUNT = (
    f"locust_response_time_seconds_{part}{{name=fanout}}" for part in ("sum", "count")
)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def start_locust(server: ServerProcess, out_dir: Path, exporter_port: int, *args: str):
    command = locust_command(
        server.url,
        "--headless",
        "--only-summary",
        "--exporter-port",
        str(exporter_port),
        "--stop-timeout",
        "5",
        "--csv",
        str(out_dir / "locust"),
        *args,
    )
    if pinning.available():
        command = pinning.on_cpus(command, LOCUST_CPU)
    print("$", " ".join(command), flush=True)
    with open(out_dir / "locust.log", "ab") as log:
        return subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=log)


def wait_for_users(locust, metrics_url: str, users: int, timeout: float) -> float:
    """Wait until Locust runs ``users`` users; return the count reached."""
    deadline = time.monotonic() + timeout
    running = 0.0
    while time.monotonic() < deadline and locust.poll() is None:
        running = scrape(metrics_url).get("locust_users", 0.0)
        if running >= users:
            break
        time.sleep(0.5)
    return running


# -- cost: µs of Locust CPU per delivered message ---------------------------------------


def run_cost(args: argparse.Namespace, out_dir: Path) -> list[CostRun]:
    runs: list[CostRun] = []
    for i in range(args.repeat):
        run_dir = out_dir / f"run{i + 1}"
        run_dir.mkdir(parents=True, exist_ok=True)
        run = _cost_once(args, run_dir)
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


def _cost_once(args: argparse.Namespace, out_dir: Path) -> CostRun:
    exporter_port = free_port()
    server_args = ["--max-connections", str(args.users + 1000)]
    with running_server(
        args.server,
        *server_args,
        cpu=pinning.SERVER_CPU if pinning.available() else None,
        log_path=out_dir / "server.log",
    ) as server:
        locust = start_locust(
            server,
            out_dir,
            exporter_port,
            "--scenario",
            "chat",
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            *args.locust_arg,
        )
        metrics_url = f"http://127.0.0.1:{exporter_port}/metrics"
        try:
            ramp_timeout = 60 + 2 * args.users / args.spawn_rate
            users = wait_for_users(locust, metrics_url, args.users, ramp_timeout)
            if users < args.users:
                raise RuntimeError(f"Locust ran {users:.0f} of {args.users} users; see {out_dir}")
            time.sleep(args.settle)
            proc = psutil.Process(locust.pid)  # taskset execs in place: the pid is Locust's
            server_proc = psutil.Process(server.pid)
            before = _cost_sample(proc, server_proc, server, metrics_url)
            time.sleep(args.window)
            after = _cost_sample(proc, server_proc, server, metrics_url)
        finally:
            stop_process(locust, timeout=60)
    return CostRun(
        users=after["users"],
        window_s=after["t"] - before["t"],
        deliveries=after["delivered"] - before["delivered"],
        locust_cpu_s=after["locust_cpu"] - before["locust_cpu"],
        server_cpu_s=after["server_cpu"] - before["server_cpu"],
        failures=after["failures"],
        loadavg_before=before["loadavg"],
        loadavg_after=after["loadavg"],
    )


def _cost_sample(proc, server_proc, server: ServerProcess, metrics_url: str) -> dict:
    locust_values = scrape(metrics_url)
    sample = {
        "t": time.monotonic(),
        "locust_cpu": cpu_seconds(proc),
        "server_cpu": cpu_seconds(server_proc),
        "delivered": scrape(server.metrics_url).get("chat_messages_delivered_total", 0.0),
        "loadavg": os.getloadavg(),
    }
    sample["users"] = locust_values.get("locust_users", 0.0)
    sample["failures"] = sum(v for k, v in locust_values.items() if k.startswith(FAILURES))
    return sample


def summarize_cost(runs: list[CostRun]) -> str:
    figures = [r.locust_us_per_delivery for r in runs]
    text = (
        f"cost: Locust {statistics.median(figures):.1f} µs of CPU per delivered message "
        f"(median of {len(runs)}: {', '.join(f'{f:.1f}' for f in figures)})"
    )
    if runs:
        rate = statistics.median(r.deliveries / r.window_s for r in runs)
        server = statistics.median(r.server_us_per_delivery for r in runs)
        text += f" at {rate:,.0f} deliveries/s; server {server:.1f} µs per delivery"
    return text


# -- fanout and idle: step shape until saturation ----------------------------------------


def run_steps(mode: str, args: argparse.Namespace, out_dir: Path) -> list[Step]:
    if mode == "idle":
        plan = dict(start=args.idle_step, step=args.idle_step, max=args.idle_max, time=25.0)
        locust_args = ["--scenario", "idle", "--room-size", "25", "--step-spawn-rate", "250"]
        server_args = ["--max-connections", str(args.idle_max + 1000)]
    else:
        plan = dict(start=args.fanout_step, step=args.fanout_step, max=args.fanout_max, time=20.0)
        locust_args = [
            "--scenario",
            "chat",
            "--room-size",
            str(args.room_size),
            "--say-every",
            str(args.say_every),
            "--step-spawn-rate",
            "200",
        ]
        server_args = ["--max-connections", str(args.fanout_max + 1000)]
    exporter_port = free_port()
    with running_server(
        args.server,
        *server_args,
        cpu=pinning.SERVER_CPU if pinning.available() else None,
        log_path=out_dir / "server.log",
    ) as server:
        locust = start_locust(
            server,
            out_dir,
            exporter_port,
            "--step-start",
            str(plan["start"]),
            "--step-users",
            str(plan["step"]),
            "--step-max",
            str(plan["max"]),
            "--step-time",
            str(plan["time"]),
            *locust_args,
            *args.locust_arg,
        )
        try:
            return _observe(locust, server, exporter_port, plan, args.step_window)
        finally:
            stop_process(locust, timeout=60)


def _observe(locust, server, exporter_port, plan, window) -> list[Step]:
    proc = psutil.Process(locust.pid)
    server_proc = psutil.Process(server.pid)
    metrics_url = f"http://127.0.0.1:{exporter_port}/metrics"
    levels = list(range(plan["start"], plan["max"] + 1, plan["step"]))
    # Align the step clock with Locust's: its first step starts with the first user.
    wait_for_users(locust, metrics_url, 1, 60)
    start = time.monotonic() - 0.2
    steps: list[Step] = []
    for i, users_target in enumerate(levels):
        step = Step(users_target)
        step_end = start + (i + 1) * plan["time"]
        # Stop sampling 2 s before Locust's next ramp (a sample takes up to ~1.5 s).
        while time.monotonic() < step_end - 2.0 and locust.poll() is None:
            time.sleep(1.0)
            values = scrape(metrics_url)
            server_values = scrape(server.metrics_url)
            try:
                cpu = cpu_seconds(proc)
                rss = proc.memory_info().rss
                server_cpu = cpu_seconds(server_proc)
            except psutil.Error:
                break
            values.update(
                t=time.monotonic(),
                cpu=cpu,
                server_cpu=server_cpu,
                rss=rss,
                server_connections=server_values.get("chat_connections", 0.0),
                delivered=server_values.get("chat_messages_delivered_total", 0.0),
            )
            step.samples.append(values)
        tail = [s for s in step.samples if s["t"] >= step_end - window - 2.0]
        if len(tail) >= 2:
            _judge(step, tail[0], tail[-1])
        steps.append(step)
        print(
            f"users {step.users:6.0f}/{users_target:<6d} "
            f"locust CPU {step.locust_cpu_percent:5.1f}% RSS {step.locust_rss_mib:5.0f} MiB "
            f"server CPU {step.server_cpu_percent:5.1f}% "
            f"receptions {step.receptions_per_s:8.0f}/s "
            f"({step.locust_us_per_delivery:5.1f} µs each, avg fanout "
            f"{step.fanout_avg_ms:6.1f} ms) failures {step.failures:.0f}",
            flush=True,
        )
        if locust.poll() is not None or step.locust_cpu_percent > SATURATED:
            break
    return steps


def _judge(step: Step, first: dict, last: dict) -> None:
    dt = last["t"] - first["t"]

    def rate(key: str) -> float:
        return (last.get(key, 0.0) - first.get(key, 0.0)) / dt

    step.users = last.get("locust_users", 0.0)
    step.server_connections = last["server_connections"]
    step.locust_cpu_percent = 100.0 * rate("cpu")
    step.server_cpu_percent = 100.0 * rate("server_cpu")
    step.locust_rss_mib = last["rss"] / 2**20
    step.fanout_per_s = rate("locust_requests_total{name=fanout}")
    step.ack_per_s = rate("locust_requests_total{name=ack}")
    step.receptions_per_s = step.fanout_per_s + step.ack_per_s
    step.deliveries_per_s = rate("delivered")
    if step.deliveries_per_s:
        step.locust_us_per_delivery = 1e6 * rate("cpu") / step.deliveries_per_s
    count = last.get(FANOUT_COUNT, 0.0) - first.get(FANOUT_COUNT, 0.0)
    total = last.get(FANOUT_SUM, 0.0) - first.get(FANOUT_SUM, 0.0)
    step.fanout_avg_ms = 1000.0 * total / count if count else 0.0
    step.failures = sum(v for k, v in last.items() if k.startswith(FAILURES))


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
    out_dir = PROJECT_ROOT / "reports" / f"capacity-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "server": args.server,
        "pinned": {"server_cpu": pinning.SERVER_CPU, "locust_cpu": LOCUST_CPU}
        if pinning.available()
        else None,
        "locust_args": args.locust_arg,
        "report_dir": str(out_dir),
    }
    if mode == "cost":
        runs = run_cost(args, out_dir)
        result.update(users=args.users, window_s=args.window, runs=[r.as_dict() for r in runs])
        summary = summarize_cost(runs)
    else:
        steps = [
            {k: v for k, v in asdict(s).items() if k != "samples"}
            for s in run_steps(mode, args, out_dir)
        ]
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
    steps.add_argument("--idle-step", type=int, default=3000)
    steps.add_argument("--idle-max", type=int, default=18000)
    steps.add_argument("--fanout-step", type=int, default=500)
    steps.add_argument("--fanout-max", type=int, default=6000)
    steps.add_argument("--room-size", type=int, default=50)
    steps.add_argument("--say-every", type=float, default=2.0)
    steps.add_argument("--step-window", type=float, default=8.0, help="steady seconds/step")
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
