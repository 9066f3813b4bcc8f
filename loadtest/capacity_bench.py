"""Benchmark (not a test): how much load can ONE Locust process generate here?

    python -m loadtest.capacity_bench idle     # concurrent idle users one process holds
    python -m loadtest.capacity_bench fanout   # fanout receptions/s before CPU > 90%
    python -m loadtest.capacity_bench all

Each mode starts a server (async by default; ``--server threaded``) and one
standalone Locust process running this project's locustfile with the step
shape, on loopback. Where ``taskset`` exists the server is pinned to CPU 1 and
Locust to CPU 0, so that each has its own core. Every second the benchmark
scrapes Locust's exporter (users, request counters) and the server's
``chat_connections``, and samples the Locust process's CPU with psutil. For
each step it reports the last ``--window`` seconds (steady state, ramp
excluded). Runs are bounded by the step plan (a few minutes at most) and a
step whose steady-state CPU passes 90% ends the run early.

Results are printed and written to reports/capacity-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field

import psutil

from loadtest.locustcmd import locust_command
from loadtest.serverproc import PROJECT_ROOT, free_port, running_server, stop_process

SAMPLE = re.compile(r'^(locust_\w+|chat_connections)(?:\{name="(\w+)"\})? ([0-9.e+-]+)$', re.M)


@dataclass
class Step:
    users_target: int
    users: float = 0.0
    server_connections: float = 0.0
    locust_cpu_percent: float = 0.0
    server_cpu_percent: float = 0.0
    locust_rss_mib: float = 0.0
    fanout_per_s: float = 0.0
    ack_per_s: float = 0.0
    fanout_avg_ms: float = 0.0
    failures: float = 0.0
    samples: list[dict] = field(default_factory=list, repr=False)


def scrape(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for metric, name, value in SAMPLE.findall(text):
        key = f"{metric}:{name}" if name else metric
        values[key] = float(value)
    # Histogram sums for the fanout average.
    for key, suffix in (("fanout_sum_s", "sum"), ("fanout_count", "count")):
        pattern = rf'^locust_response_time_seconds_{suffix}\{{name="fanout"\}} (\S+)$'
        for match in re.finditer(pattern, text, re.M):
            values[key] = float(match.group(1))
    return values


def run(mode: str, args: argparse.Namespace) -> dict:
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
            "100",
        ]
        server_args = []
    have_taskset = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    exporter_port = free_port()
    out_dir = PROJECT_ROOT / "reports" / f"capacity-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    with running_server(
        args.server, *server_args, cpu=1 if have_taskset else None, log_path=out_dir / "server.log"
    ) as server:
        command = locust_command(
            server.url,
            "--headless",
            "--only-summary",
            "--exporter-port",
            str(exporter_port),
            "--step-start",
            str(plan["start"]),
            "--step-users",
            str(plan["step"]),
            "--step-max",
            str(plan["max"]),
            "--step-time",
            str(plan["time"]),
            "--stop-timeout",
            "5",
            "--csv",
            str(out_dir / "locust"),
            *locust_args,
        )
        if have_taskset:
            command = ["taskset", "-c", "0", *command]
        print("$", " ".join(command), flush=True)
        with open(out_dir / "locust.log", "wb") as log:
            locust = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=log)
        try:
            steps = _observe(locust, server, exporter_port, plan, args.window)
        finally:
            stop_process(locust, timeout=60)
    result = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "server": args.server,
        "pinned": have_taskset,
        "plan": plan,
        "locust_args": locust_args,
        "steps": [{k: v for k, v in asdict(s).items() if k != "samples"} for s in steps],
        "report_dir": str(out_dir),
    }
    (out_dir / "capacity.json").write_text(json.dumps(result, indent=2))
    return result


def _observe(locust, server, exporter_port, plan, window) -> list[Step]:
    proc = psutil.Process(locust.pid)
    # taskset execs the interpreter in place, so the pid is Locust's own.
    proc.cpu_percent(None)
    server_proc = psutil.Process(server.pid)
    server_proc.cpu_percent(None)
    metrics_url = f"http://127.0.0.1:{exporter_port}/metrics"
    levels = list(range(plan["start"], plan["max"] + 1, plan["step"]))
    # Align the step clock with Locust's: its first step starts with the first user.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and locust.poll() is None:
        if scrape(metrics_url).get("locust_users", 0.0) > 0:
            break
        time.sleep(0.2)
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
                cpu = proc.cpu_percent(None)
                rss = proc.memory_info().rss
                server_cpu = server_proc.cpu_percent(None)
            except psutil.Error:
                break
            values.update(
                t=time.monotonic(),
                cpu=cpu,
                server_cpu=server_cpu,
                rss=rss,
                server_connections=server_values.get("chat_connections", 0.0),
            )
            step.samples.append(values)
        tail = [s for s in step.samples if s["t"] >= step_end - window - 2.0]
        if len(tail) >= 2:
            first, last = tail[0], tail[-1]
            dt = last["t"] - first["t"]

            def rate(key, first=first, last=last, dt=dt):
                return (last.get(key, 0.0) - first.get(key, 0.0)) / dt

            step.users = last.get("locust_users", 0.0)
            step.server_connections = last["server_connections"]
            step.locust_cpu_percent = sum(s["cpu"] for s in tail[1:]) / (len(tail) - 1)
            step.server_cpu_percent = sum(s["server_cpu"] for s in tail[1:]) / (len(tail) - 1)
            step.locust_rss_mib = last["rss"] / 2**20
            step.fanout_per_s = rate("locust_requests_total:fanout")
            step.ack_per_s = rate("locust_requests_total:ack")
            count = last.get("fanout_count", 0.0) - first.get("fanout_count", 0.0)
            total = last.get("fanout_sum_s", 0.0) - first.get("fanout_sum_s", 0.0)
            step.fanout_avg_ms = 1000.0 * total / count if count else 0.0
            step.failures = sum(
                v for k, v in last.items() if k.startswith("locust_failures_total:")
            )
        steps.append(step)
        print(
            f"users {step.users:6.0f}/{users_target:<6d} "
            f"server conns {step.server_connections:6.0f} "
            f"locust CPU {step.locust_cpu_percent:5.1f}% RSS {step.locust_rss_mib:5.0f} MiB "
            f"server CPU {step.server_cpu_percent:5.1f}% "
            f"fanout {step.fanout_per_s:8.0f}/s (avg {step.fanout_avg_ms:6.1f} ms) "
            f"failures {step.failures:.0f}",
            flush=True,
        )
        if locust.poll() is not None or step.locust_cpu_percent > 90.0:
            break
    return steps


def summarize(result: dict) -> str:
    steps = result["steps"]
    ok = [
        s
        for s in steps
        if s["locust_cpu_percent"] <= 90.0
        and s["failures"] == 0
        and s["users"] >= s["users_target"]
    ]
    if result["mode"] == "idle":
        best = max((s["users"] for s in ok), default=0)
        return (
            f"idle: one Locust process held {best:.0f} concurrent idle users "
            f"(no failure, CPU <= 90%) against the {result['server']} server"
        )
    best = max(ok, key=lambda s: s["fanout_per_s"], default=None)
    over = next((s for s in steps if s["locust_cpu_percent"] > 90.0), None)
    text = "fanout: "
    if best:
        text += (
            f"{best['fanout_per_s']:.0f} receptions/s at {best['locust_cpu_percent']:.0f}% CPU "
            f"({best['users']:.0f} users, avg fanout {best['fanout_avg_ms']:.1f} ms)"
        )
    if over:
        text += (
            f"; above 90% CPU at {over['fanout_per_s']:.0f}/s "
            f"({over['users_target']} users, avg fanout {over['fanout_avg_ms']:.1f} ms)"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["idle", "fanout", "all"])
    parser.add_argument("--server", choices=["async", "threaded"], default="async")
    parser.add_argument("--idle-step", type=int, default=3000)
    parser.add_argument("--idle-max", type=int, default=18000)
    parser.add_argument("--fanout-step", type=int, default=300)
    parser.add_argument("--fanout-max", type=int, default=3000)
    parser.add_argument("--room-size", type=int, default=50)
    parser.add_argument("--say-every", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=8.0, help="steady-state seconds/step")
    args = parser.parse_args(argv)
    modes = ["idle", "fanout"] if args.mode == "all" else [args.mode]
    summaries = []
    for mode in modes:
        result = run(mode, args)
        summaries.append(summarize(result))
        print(summaries[-1], flush=True)
        print(f"details: {result['report_dir']}/capacity.json", flush=True)
    print("\n".join(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
