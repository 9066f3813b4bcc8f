"""``python -m loadtest.compare``: run both servers under the same stepped load, write a report.

    python -m loadtest.compare                       # quick profile, chat scenario
    python -m loadtest.compare --profile smoke       # under a minute (tests, CI)
    python -m loadtest.compare --profile full --scenario idle
    python -m loadtest.compare --profile c100k --scenario idle   # up to 100,000 connections

``make compare [PROFILE=smoke|quick|full] [SCENARIO=chat|idle|broadcast|churn]`` runs this.
The report goes to ``reports/<timestamp>/`` and ``reports/latest`` points at it.
See docs/compare.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from loadtest import cpubudget, machine, scenarios
from loadtest.compare import knee, report, runner, scaleout, steps
from loadtest.compare.profiles import PROFILES, Profile, StepRules, profile
from loadtest.redisproc import REDIS_SERVER, RedisProcess
from loadtest.serverproc import PROJECT_ROOT

SOURCE_BASE = "127.0.0.2"  # spread profiles: Locust process k connects from 127.0.0.2 + k
SPREAD_PING_INTERVAL = 30  # s: the servers' keepalive interval in spread profiles


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.compare",
        description="Step both twinchat servers through the same Locust load and report "
        "where each one hits its limit.",
    )
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--scenario", choices=scenarios.NAMES, default=scenarios.DEFAULT)
    parser.add_argument("--servers", default="threaded,async", help="comma-separated, in run order")
    parser.add_argument("--reports", type=Path, default=PROJECT_ROOT / "reports")
    parser.add_argument(
        "--out", type=Path, default=None, help="report directory (default reports/<timestamp>)"
    )
    steps = parser.add_argument_group("steps (override the profile)")
    steps.add_argument("--step-start", type=int, dest="start", help="users of the first step")
    steps.add_argument("--growth", type=float, help="users of a step / users of the one before")
    steps.add_argument("--step-max", type=int, dest="maximum", help="users of the last step")
    steps.add_argument("--step-time", type=float, help="seconds each step is held after its ramp")
    steps.add_argument("--spawn-rate", type=float, help="users started per second in a ramp")
    steps.add_argument(
        "--precision", type=float, help="narrow until the limit is known within this (0.11)"
    )
    steps.add_argument("--window", type=float, help="seconds at the end of a step to judge it")
    steps.add_argument("--probe-time", type=float, help="seconds of the unpinned probe; 0: none")
    parser.add_argument("--slo-ms", type=float, default=None, help="p99 SLO (default 500)")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and Locust to CPUs"
    )
    parser.add_argument(
        "--server-cpus", default="auto",
        help="CPU budget of each server in cores, as a container limit (cgroup quota): a "
        "number, 'none', or 'auto' (default): 0.5 where the machine cannot give Locust more "
        "CPUs than the server (2 CPUs or fewer), else none",
    )  # fmt: skip
    parser.add_argument(
        "--locust-arg", action="append", default=[],
        help="extra Locust argument (repeat), e.g. --locust-arg=--room-size=50",
    )  # fmt: skip
    parser.add_argument(
        "--server-arg", action="append", default=[],
        help="extra server argument for both servers (repeat)",
    )  # fmt: skip
    parser.add_argument(
        "--scale-out", choices=["auto", "on", "off"], default="auto",
        help="also run the async server on Redis with 1 and N workers (auto: with the full "
        "profile, when redis-server is installed)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--render", type=Path, metavar="DIR",
        help="only redraw DIR's report (plots, claims, HTML) from its summary.json",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    prof = profile(args.profile).with_steps(
        start=args.start,
        growth=args.growth,
        maximum=args.maximum,
        step_time=args.step_time,
        spawn_rate=args.spawn_rate,
        precision=args.precision,
        window=args.window,
        probe_time=args.probe_time,
    )
    if args.slo_ms is not None:
        prof = replace(prof, limits=replace(prof.limits, slo_ms=args.slo_ms))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or args.reports / stamp
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        return run(args, argv, prof, out, stack)


def run(args, argv, prof: Profile, out: Path, stack: ExitStack) -> int:
    """Run every server through the profile, write the report; ``stack`` stops what
    the run started (the Redis of a spread profile)."""
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    locust_args, server_args = list(args.locust_arg), list(args.server_arg)
    if prof.spread:
        pinning = runner.Pinning.spread(prof.processes)
        server_cpus = None
        budget_why = (
            f"none ({prof.processes} server and {prof.processes} Locust processes share the "
            "CPUs, as the scale-out run)"
        )
        redis = spread_redis(stack)
        # The idle users ping every 20-30 s: with the keepalive interval just above that,
        # the servers ping none of them (common/keepalive.py pings only silent clients).
        server_args += ["--broker", redis.url, "--ping-interval", str(SPREAD_PING_INTERVAL)]
        locust_args += ["--source-address", SOURCE_BASE, "--heartbeat-liveness", "30"]
    else:
        redis = None
        pinning = runner.Pinning.choose(not args.no_pin)
        server_cpus, budget_why = choose_budget(args.server_cpus, pinning)
    options = runner.RunOptions(
        prof, args.scenario, out, pinning, locust_args, server_args,
        server_cpus=server_cpus, echo=not args.quiet, workers=prof.processes, redis=redis,
        task_cap=prof.spread,
    )  # fmt: skip
    about = machine.describe(pinning.as_dict(), PROJECT_ROOT)
    runner.say(
        options,
        f"profile {prof.name}, scenario {args.scenario}: climb {prof.levels()} users, "
        f"{prof.step_time:g} s each, then narrow to {prof.precision:.0%}; "
        f"servers {', '.join(kinds)}; {pinning.why}; CPU budget: {budget_why}; report in {out}",
    )
    began = time.monotonic()
    runs, probes = {}, {}
    for kind in kinds:
        runs[kind] = knee.find_limit(kind, options)
        if prof.probe_time > 0:
            probes[kind] = knee.probe(kind, options, runs[kind])
    scale_runs = None
    if _want_scale_out(args.scale_out, prof):
        scale_runs = scaleout.run(options)
    summary = report.write(
        out,
        root=PROJECT_ROOT,
        profile=prof,
        scenario=args.scenario,
        latency_name=options.latency_name,
        runs=runs,
        probes=probes,
        machine=about,
        command=[Path(sys.executable).name, "-m", "loadtest.compare", *(argv or sys.argv[1:])],
        locust_args=locust_args,
        server_args=server_args,
        scale_out=scale_runs,
        budget={"cores": server_cpus, "why": budget_why},
    )
    _link_latest(args.reports, out)
    runner.say(options, f"done in {time.monotonic() - began:.0f} s: {out / 'report.html'}")
    if not args.quiet:
        print(report.headline_markdown(summary["headline"]))
        if summary["scale_out"]:
            print(report.headline_markdown(summary["scale_out"]["headline"]))
    return 0


def spread_redis(stack: ExitStack) -> RedisProcess:
    """A redis-server for the server processes of a spread profile, stopped with ``stack``."""
    if REDIS_SERVER is None:
        raise SystemExit(
            "this profile runs the servers as several processes on Redis: "
            "install redis-server (apt-get install redis-server)"
        )
    data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="twinchat-redis-")))
    redis = RedisProcess(data)
    redis.start()
    stack.callback(redis.stop)
    return redis


def choose_budget(choice: str, pinning: runner.Pinning) -> tuple[float | None, str]:
    """(cores of the servers' CPU budget or None, why), from ``--server-cpus``."""
    if choice in ("none", "0"):
        return None, "none (--server-cpus none)"
    if choice == "auto":
        if pinning.server_cpu is None:
            return None, "none (not pinned: the server may use every CPU)"
        locust_cpus = pinning.locust_processes
        if locust_cpus > 1:
            return None, f"none (Locust has {locust_cpus} CPUs, the server 1)"
        cores = AUTO_BUDGET
        why = (
            f"{cores:g} CPU per server, as a container limit would set (auto: this machine "
            f"can give Locust no more CPUs than the server, {locust_cpus} each)"
        )
    else:
        try:
            cores = float(choice)
        except ValueError:
            raise SystemExit(f"--server-cpus {choice!r}: a number of cores, none or auto") from None
        why = f"{cores:g} CPU per server (--server-cpus)"
    unavailable = cpubudget.available()
    if unavailable:
        return None, f"none: wanted {cores:g} CPU, but {unavailable}"
    return cores, why


AUTO_BUDGET = 0.5  # cores: half of the server's CPU, leaving Locust twice its share


def _want_scale_out(choice: str, prof: Profile) -> bool:
    if choice == "off":
        return False
    if not scaleout.available():
        if choice == "on":
            raise SystemExit("--scale-out on needs redis-server and at least 2 CPUs")
        return False
    return choice == "on" or prof.name == "full"


def render(out: Path) -> int:
    """Rebuild a report from its summary.json and raw samples (after a change to the code)."""
    old = json.loads((out / "summary.json").read_text())
    p = old["profile"]
    limits = StepRules(**p["limits"])
    fields = {k: v for k, v in p.items() if k not in ("levels", "limits")}
    fields["climb"] = tuple(fields.get("climb") or ())
    prof = Profile(**fields, limits=limits)
    servers = old["servers"]
    summary = report.write(
        out,
        root=PROJECT_ROOT,
        profile=prof,
        scenario=old["scenario"],
        latency_name=old["latency_name"],
        runs={k: _resummarize(out, v, limits) for k, v in servers.items()},
        probes={
            k: _resummarize(out, v["probe"], limits) for k, v in servers.items() if v.get("probe")
        },
        machine=old["machine"],
        command=old["command"],
        locust_args=old["locust_args"],
        server_args=old["server_args"],
        lines=old.get("source_lines"),
        scale_out={
            name: _resummarize(out, run, limits)
            for name, run in ((old.get("scale_out") or {}).get("runs") or {}).items()
        } or None,
        budget=old.get("budget"),
    )  # fmt: skip
    print(report.headline_markdown(summary["headline"]))
    return 0


def _resummarize(out: Path, run: dict, limits: StepRules) -> dict:
    """Recompute a run's step rows from their raw samples (same steps, current code),
    then its limit: the climb's verdict, narrowed by the narrowing rows. A row whose
    samples are gone is kept as summary.json has it."""
    run = {k: v for k, v in run.items() if k not in ("derived", "probe")}
    samples: dict[str, list[dict] | None] = {}
    rows = []
    for old in map(steps.StepRow.from_dict, run["steps"]):
        name = old.run or run["name"]
        if name not in samples:
            path = out / f"{name}-samples.jsonl"
            samples[name] = (
                [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if path.exists()
                else None
            )
        if samples[name] is None:
            rows.append(old)
            continue
        judged_from = old.judged_from if old.judged_from is not None else old.end - run["window"]
        row = steps.summarize(
            old.index, old.users_target, old.start, old.end, old.end - judged_from,
            samples[name], limits, exited=old.server_exited,
        )  # fmt: skip
        rows.append(replace(row, **{k: getattr(old, k) for k in KEPT_ON_RENDER}))
    climb = [r for r in rows if r.phase in (None, "climb")]
    finished = len(climb) == len(run["levels"])
    climb_limit = steps.verdict(climb, limits, finished)
    for name in {r.run for r in rows if r.phase in ("base", "narrow")}:
        steps.confirm([r for r in rows if r.run == name])  # as its run's verdict did
    rows = [knee.say_if_not_counted(row, climb_limit) for row in rows]
    return {**run, "steps": rows, "limit": knee.combine(climb_limit, rows)}


# What a re-render keeps of a row: the runner's marks (threads, Locust's CSV), not samples.
KEPT_ON_RENDER = (
    "thread_cpu_seconds", "busiest_thread_share", "locust_p50_ms", "locust_p99_ms",
    "cpu_cores_exact", "wait_to_run_per_s", "voluntary_switches_per_delivery",
    "involuntary_switches_per_delivery", "throttled_per_s", "ramp_end", "run", "phase",
    "settled", "judged_from",
)  # fmt: skip


def _link_latest(reports: Path, out: Path) -> None:
    """Point reports/latest at ``out`` (replaced atomically)."""
    if out.resolve().parent != reports.resolve():
        return
    link = reports / "latest"
    tmp = reports / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(out.name)
    os.replace(tmp, link)


if __name__ == "__main__":
    sys.exit(main())
