"""Run one server under the stepped Locust load and reduce the run to step rows.

For each server: start it fresh (``loadtest.serverproc.start_server``), start
Locust headless with the project's locustfile and step shape, take one sample
per second (:class:`~loadtest.compare.sampler.Sampler`), judge each step when
it ends (:mod:`loadtest.compare.steps`) and stop at the server's limit. Where
``taskset`` exists and there are at least 2 CPUs, the server runs on CPU 0 and
Locust on the others, so that neither steals the other's core.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.compare import prom, sampler, steps
from loadtest.compare.profiles import LATENCY_NAME, Profile
from loadtest.locustcmd import locust_command
from loadtest.serverproc import PROJECT_ROOT, free_port, start_server, stop_process

STARTUP_GRACE = 30.0  # seconds for Locust to start before the run is abandoned
STOP_GRACE = 30.0  # seconds for Locust to stop its users and write its CSVs


@dataclass
class Pinning:
    """Which CPUs the server and Locust run on (``None``: not pinned)."""

    server_cpu: int | None
    locust_cpus: str | None
    why: str

    @classmethod
    def choose(cls, wanted: bool) -> Pinning:
        cpus = os.cpu_count() or 1
        if not wanted:
            return cls(None, None, "pinning disabled (PIN=0)")
        if cpus < 2:
            return cls(None, None, f"not pinned: {cpus} CPU")
        if shutil.which("taskset") is None:
            return cls(None, None, "not pinned: taskset not found")
        rest = "1" if cpus == 2 else f"1-{cpus - 1}"
        return cls(0, rest, f"server on CPU 0, Locust on CPU {rest} (taskset)")

    def as_dict(self) -> dict:
        return {"server_cpu": self.server_cpu, "locust_cpus": self.locust_cpus, "why": self.why}


@dataclass
class RunOptions:
    profile: Profile
    scenario: str
    out_dir: Path
    pinning: Pinning
    locust_args: list[str] = field(default_factory=list)
    server_args: list[str] = field(default_factory=list)
    progress_every: float = 5.0
    echo: bool = True

    @property
    def latency_name(self) -> str:
        return LATENCY_NAME[self.scenario]


def say(options: RunOptions, text: str) -> None:
    if options.echo:
        print(f"[compare] {text}", flush=True)


def run_server(
    kind: str,
    options: RunOptions,
    *,
    levels: list[int] | None = None,
    step_time: float | None = None,
    window: float | None = None,
    pin: bool = True,
    tag: str = "",
    server_args: list[str] | None = None,
    workers: int = 1,
) -> dict:
    """Run ``kind`` through the step plan; return its step rows, limit and raw-file names.

    ``server_args`` are added to the options' server arguments; with
    ``workers`` > 1 the server runs that many processes (``--workers``) and
    their metrics (ports ``metrics_port + i``) are summed.
    """
    profile = options.profile
    levels = levels or profile.levels()
    step_time = step_time or profile.step_time
    window = window or profile.window
    name = f"{kind}{tag}"
    out = options.out_dir
    pinning = options.pinning if pin else Pinning(None, None, "not pinned (probe)")

    extra = [*options.server_args, *(server_args or [])]
    if workers > 1:
        extra += ["--workers", str(workers)]
    server = start_server(
        kind,
        *extra,
        log_path=out / f"{name}-server.log",
        cpu=pinning.server_cpu,
    )
    metrics_urls = [
        f"http://{server.host}:{server.metrics_port + i}/metrics" for i in range(workers)
    ]
    exporter_port = free_port()
    step = levels[1] - levels[0] if len(levels) > 1 else levels[0]
    command = locust_command(
        server.url,
        "--headless",
        "--only-summary",
        "--scenario", options.scenario,
        "--step-start", str(levels[0]),
        "--step-users", str(step),
        "--step-max", str(levels[-1]),
        "--step-time", str(step_time),
        "--csv", str(out / f"{name}-locust"),
        "--csv-full-history",
        "--exporter-port", str(exporter_port),
        *options.locust_args,
    )  # fmt: skip
    if pinning.locust_cpus is not None:
        command = ["taskset", "-c", pinning.locust_cpus, *command]

    try:
        return _drive(kind, name, options, server, metrics_urls, command, exporter_port, levels,
                      step_time, window, pinning)  # fmt: skip
    finally:
        server.stop()  # idempotent: already stopped on the normal path


def _drive(kind, name, options, server, metrics_urls, command, exporter_port, levels, step_time,
           window, pinning) -> dict:  # fmt: skip
    """Start Locust against the running ``server``, sample, judge, stop; return the run."""
    out = options.out_dir
    sample_file = open(out / f"{name}-samples.jsonl", "w")  # noqa: SIM115
    sam = sampler.Sampler(
        metrics_urls, f"http://127.0.0.1:{exporter_port}/metrics", options.latency_name
    )
    samples: list[dict] = []

    def take() -> dict:
        sample = sam.sample()
        samples.append(sample)
        sample_file.write(json.dumps(sample) + "\n")
        return sample

    baseline = take()
    thread_marks = [sampler.thread_times(server.pid)]
    locust_log = open(out / f"{name}-locust.log", "wb")  # noqa: SIM115
    try:
        locust = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=locust_log, stderr=subprocess.STDOUT
        )
    except OSError:
        locust_log.close()
        sample_file.close()
        raise
    sam.watch_locust(locust.pid)
    say(options, f"{name}: server pid {server.pid}, Locust pid {locust.pid}; {pinning.why}")

    rows: list[dict] = []
    t0: float | None = None

    def judge(index: int, end: float | None = None) -> None:
        """Reduce step ``index`` to a row (cut at ``end`` if it ended early) and print it."""
        start = t0 + index * step_time
        end = start + step_time if end is None else min(end, start + step_time)
        row = steps.summarize(
            index, levels[index], start, end, window, samples, options.profile.limits
        )
        mark = sampler.thread_times(server.pid)
        busiest = sampler.busiest_thread(mark, thread_marks[-1])
        row["thread_cpu_seconds"] = busiest["cpu_seconds"]
        row["busiest_thread_share"] = busiest["busiest_share"]
        thread_marks.append(mark)
        rows.append(row)
        _step_line(options, row, len(levels))

    started = time.time()
    deadline = started + STARTUP_GRACE + len(levels) * step_time + 15
    next_progress = 0.0
    stop_reason = "max step"
    try:
        while True:
            sample = take()
            now = sample["t"]
            users = steps._get(sample, "locust", "users")
            if t0 is None and users:
                t0 = now - 0.1  # polled every 0.2 s until here: the shape's start
            if t0 is None:
                if locust.poll() is not None or now - started > STARTUP_GRACE:
                    stop_reason = "Locust did not start"
                    break
                time.sleep(0.2)
                continue
            # Judge every step that has ended (1 s of slack so its last sample is in).
            while len(rows) < len(levels) and now >= t0 + (len(rows) + 1) * step_time + 1.0:
                judge(len(rows))
            server_gone = server.proc.poll() is not None
            if server_gone:
                stop_reason = f"server exited with {server.proc.returncode}"
                if len(rows) < len(levels):  # the step it died in, cut short
                    judge(len(rows), end=now)
                    rows[-1]["outcome"], rows[-1]["reason"] = "limit", "died"
                break
            if steps.should_stop(rows, options.profile.limits):
                stop_reason = next(
                    (r["reason"] for r in rows if r["outcome"] == "limit"), rows[-1]["reason"]
                )
                break
            if len(rows) == len(levels):
                break
            if locust.poll() is not None:
                # The shape ends Locust at the end of its last step: judge what is left.
                while len(rows) < len(levels) and now > t0 + len(rows) * step_time + window / 2:
                    judge(len(rows), end=now)
                stop_reason = f"Locust exited with {locust.returncode}"
                break
            if now > deadline:
                stop_reason = "deadline"
                break
            if now >= next_progress:
                next_progress = now + options.progress_every
                _progress(options, name, t0, step_time, levels, samples)
            time.sleep(max(0.0, 1.0 - (time.time() - now)))
    finally:
        locust_exit = _stop(locust)
        server_exit = server.stop()
        locust_log.close()
        sample_file.close()

    _add_locust_percentiles(rows, out / f"{name}-locust_stats_history.csv", options.latency_name)
    finished = len(rows) == len(levels)
    limit = steps.verdict(rows, options.profile.limits, finished)
    say(options, f"{name}: {_limit_text(limit)} (stopped: {stop_reason})")
    return {
        "kind": kind,
        "name": name,
        "levels": levels,
        "step_time": step_time,
        "window": window,
        "pinning": pinning.as_dict(),
        "baseline": baseline["server"],
        "steps": rows,
        "limit": limit,
        "stop_reason": stop_reason,
        "locust_exit": locust_exit,
        "server_exit": server_exit,
        "server_log_tail": server.log_tail(2000) if server_exit not in (0, -15) else "",
        "files": sorted(p.name for p in out.glob(f"{name}-*")),
    }


def _stop(locust: subprocess.Popen) -> int:
    """SIGTERM Locust (it stops its users and writes its CSVs); kill it if it hangs."""
    return stop_process(locust, signal.SIGTERM, STOP_GRACE)


def _progress(options, name, t0, step_time, levels, samples) -> None:
    """One line: server, step, users, p99 and deliveries/s over the last few seconds."""
    last = samples[-1]
    earlier = steps.at(samples, last["t"] - options.progress_every)
    latency = prom.delta(
        steps._get(last, "locust", "latency"), steps._get(earlier, "locust", "latency")
    )
    p99 = prom.quantile(0.99, latency)
    deliveries = steps._rate(earlier, last, "delivered")
    cpu = steps._rate(earlier, last, "cpu_seconds")
    index = min(int((last["t"] - t0) // step_time), len(levels) - 1)
    users = steps._get(last, "locust", "users")
    say(
        options,
        f"{name:<9} step {index + 1}/{len(levels)}  users {_num(users)}"
        f"  conns {_num(steps._get(last, 'server', 'connections'))}"
        f"  p99 {options.latency_name} {_ms(p99)}"
        f"  deliveries/s {_num(deliveries)}"
        f"  server CPU {_cores(cpu)}  Locust CPU {_num(last.get('locust_cpu'))}%",
    )


def _step_line(options, row, count) -> None:
    say(
        options,
        f"  step {row['index'] + 1}/{count} done: {row['users_target']} users, "
        f"p99 {_ms(_s(row['latency_p99_ms']))}, deliveries/s {_num(row['deliveries_per_s'])}, "
        f"failures {100 * row['failure_ratio']:.2f}% -> {row['outcome']}"
        + (f" ({row['reason']})" if row["reason"] else ""),
    )


def _limit_text(limit: dict) -> str:
    if limit["reached"]:
        return f"limit at {limit['users']} users: {limit['criterion']}"
    return f"limit {limit['criterion']}; last good step {limit['last_ok_users']} users"


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} cores"


def _add_locust_percentiles(rows: list[dict], history: Path, name: str) -> None:
    """Add Locust's own p50/p99 (its last 10 s, from --csv-full-history) at each step's end."""
    if not history.exists():
        return
    points: list[tuple[int, float | None, float | None]] = []
    with history.open(newline="") as handle:
        for record in csv.DictReader(handle):
            if record.get("Name") != name:
                continue
            points.append((int(record["Timestamp"]), _float(record["50%"]), _float(record["99%"])))
    for row in rows:
        before = [p for p in points if p[0] <= row["end"]]
        if before:
            _, row["locust_p50_ms"], row["locust_p99_ms"] = before[-1]


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None
