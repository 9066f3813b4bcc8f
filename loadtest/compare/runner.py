"""Run one server under a stepped Locust load and reduce the run to step rows.

:func:`run_server` starts the server fresh (``loadtest.serverproc.start_server``),
inside a CPU budget when the run has one (:mod:`loadtest.cpubudget`), starts
Locust headless with the project's locustfile and a :class:`~loadtest.shape.StepPlan`
(``--step-levels``), takes one sample per second
(:class:`~loadtest.compare.sampler.Sampler`), reads the server's threads from
``/proc`` at the start and the end of each step's judged window, judges each
step when it ends (:mod:`loadtest.compare.steps`) and stops at the server's
limit. Where ``taskset`` exists and there are at least 2 CPUs, the server runs
on CPU 0 and Locust on the others, one Locust process per CPU
(``--processes``), so that neither steals the other's cores.
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

from loadtest import pinning, prom, schedstat, taskcap
from loadtest.compare import sampler, steps, walls
from loadtest.compare.profiles import Profile
from loadtest.cpubudget import CpuBudget
from loadtest.locustcmd import locust_command
from loadtest.pinning import on_cpus
from loadtest.scenarios import SCENARIOS
from loadtest.serverproc import (
    PROJECT_ROOT,
    ServerProcess,
    free_port,
    start_server,
    stop_process,
)
from loadtest.stepplan import StepPlan

STARTUP_GRACE = 30.0  # seconds for Locust to start before the run is abandoned
STOP_GRACE = 30.0  # seconds for Locust to stop its users and write its CSVs
SETTLED = 0.99  # share of a step's users the server must hold before its window starts
MIN_WINDOW = 3.0  # seconds: the window of a step that never settled


@dataclass
class Pinning:
    """Which CPUs the server and Locust run on (``None``: not pinned), and how many
    Locust processes run (one per CPU it is given)."""

    server_cpu: int | None
    locust_cpus: str | None
    locust_processes: int
    why: str

    @classmethod
    def choose(cls, wanted: bool) -> Pinning:
        cpus = pinning.cpus()
        processes = max(1, cpus - 1)
        if not wanted:
            return cls(None, None, processes, "pinning disabled (--no-pin)")
        if cpus < 2:
            return cls(None, None, 1, f"not pinned: {cpus} CPU")
        if not pinning.available():
            return cls(None, None, processes, "not pinned: taskset not found")
        rest = pinning.load_cpus()
        return cls(
            pinning.SERVER_CPU, rest, processes,
            f"server on CPU 0, {processes} Locust process{'es' if processes > 1 else ''} "
            f"on CPU {rest} (taskset)",
        )  # fmt: skip

    @classmethod
    def spread(cls, processes: int) -> Pinning:
        """Nothing pinned, ``processes`` Locust processes (and as many server processes)
        sharing every CPU, as the scale-out run does."""
        return cls(
            None, None, processes,
            f"nothing pinned: {processes} server processes, {processes} Locust processes, "
            "Redis and the runner share the machine's CPUs",
        )  # fmt: skip

    @classmethod
    def one_locust(cls) -> Pinning:
        """The server on CPU 0 and one Locust process on CPU 1 (Locust capacity), or
        nothing pinned where that cannot be."""
        if not pinning.available():
            return cls(None, None, 1, "not pinned: fewer than 2 CPUs or no taskset")
        return cls(pinning.SERVER_CPU, "1", 1, "server on CPU 0, 1 Locust process on CPU 1")

    def unpinned(self) -> Pinning:
        return Pinning(None, None, self.locust_processes, "nothing pinned (probe)")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunOptions:
    profile: Profile
    scenario: str
    out_dir: Path
    pinning: Pinning
    locust_args: list[str] = field(default_factory=list)
    server_args: list[str] = field(default_factory=list)
    server_cpus: float | None = None  # the servers' CPU budget in cores (None: no budget)
    workers: int = 1  # server processes (--workers); > 1 needs a broker in server_args
    redis: object | None = None  # a RedisProcess shared by the runs: flushed before each
    task_cap: bool = False  # cap each server's tasks below what the machine has left
    progress_every: float = 5.0
    echo: bool = True
    label: str = "compare"  # the prefix of the lines it prints

    @property
    def latency_name(self) -> str:
        return SCENARIOS[self.scenario].latency


def say(options: RunOptions, text: str) -> None:
    if options.echo:
        print(f"[{options.label}] {text}", flush=True)


def run_server(
    kind: str,
    options: RunOptions,
    *,
    levels: list[int] | None = None,
    step_time: float | None = None,
    window: float | None = None,
    pin: bool = True,
    budget: bool = True,
    tag: str = "",
    server_args: list[str] | None = None,
    workers: int | None = None,
    on_start: Callable[[ServerProcess], None] | None = None,
    first_spawn_rate: float = 0.0,
) -> dict:
    """Run ``kind`` through the step plan; return its step rows, limit and raw-file names.

    ``levels`` default to the profile's climb; ``pin=False`` runs nothing
    pinned and ``budget=False`` without the CPU budget (the unpinned probe).
    ``server_args`` are added to the options' server arguments; with
    ``workers`` > 1 the server runs that many processes (``--workers``) and
    their metrics (ports ``metrics_port + i``) are summed (default: the options').
    ``on_start(server)`` is called once the server serves, before Locust starts
    (a probe of its own). ``first_spawn_rate`` (> 0) is the rate of the first ramp
    (:class:`~loadtest.stepplan.StepPlan`). With ``options.task_cap`` the server's process tree
    runs in a pids cgroup capped at what the machine has left
    (:mod:`loadtest.taskcap`), so that a thread-per-connection server meets the
    machine's thread wall without taking every other process's task ids with it.
    """
    workers = workers or options.workers
    profile = options.profile
    plan = StepPlan(
        tuple(levels or profile.levels()), step_time or profile.step_time, profile.spawn_rate,
        first_spawn_rate,
    )  # fmt: skip
    window = window or profile.window
    name = f"{kind}{tag}"
    out = options.out_dir
    pinning = options.pinning if pin else options.pinning.unpinned()
    with contextlib.ExitStack() as cleanup:  # stops the server, then removes its groups
        cpu_budget = cap = None
        if budget and options.server_cpus:
            cpu_budget = CpuBudget.create(options.server_cpus, f"twinchat-{name}")
            cleanup.callback(cpu_budget.remove)
        if options.task_cap and taskcap.available() is None:
            headroom = taskcap.machine_headroom() or 1 << 20
            cap = taskcap.TaskCap.create(headroom, f"twinchat-{name}")
            cleanup.callback(cap.remove)
        groups = [group for group in (cpu_budget, cap) if group]
        if options.redis is not None:
            options.redis.flush()  # rooms, seqs and presence of the previous run

        def enter() -> None:
            for group in groups:
                group.enter()

        extra = [*options.server_args, *(server_args or [])]
        if workers > 1:
            extra += ["--workers", str(workers)]
        server = start_server(
            kind, *extra, log_path=out / f"{name}-server.log", cpu=pinning.server_cpu,
            preexec_fn=enter if groups else None,
        )  # fmt: skip
        cleanup.callback(server.stop)  # idempotent: already stopped on the normal path
        if on_start is not None:
            on_start(server)
        metrics_urls = [
            f"http://{server.host}:{server.metrics_port + i}/metrics" for i in range(workers)
        ]
        exporter_port = free_port()
        command = locust_command(
            server.url,
            "--headless",
            "--only-summary",
            "--scenario", options.scenario,
            "--step-levels", ",".join(str(n) for n in plan.levels),
            "--step-time", str(plan.step_time),
            "--step-spawn-rate", str(plan.spawn_rate),
            *(["--step-first-spawn-rate", str(first_spawn_rate)] if first_spawn_rate else []),
            "--csv", str(out / f"{name}-locust"),
            "--csv-full-history",
            "--exporter-port", str(exporter_port),
            *(["--processes", str(pinning.locust_processes)]
              if pinning.locust_processes > 1 else []),
            *options.locust_args,
        )  # fmt: skip
        command = on_cpus(command, pinning.locust_cpus)
        drive = StepDriver(name, options, server, plan, window, pinning, cpu_budget)
        result = drive.run(metrics_urls, command, exporter_port)
        result["wall"] = walls.evidence(server.log_path, cap)
    return {
        "kind": kind,
        "name": name,
        "levels": list(plan.levels),
        "step_time": plan.step_time,
        "spawn_rate": plan.spawn_rate,
        "first_spawn_rate": plan.rate_of(0),
        "window": window,
        "pinning": pinning.as_dict(),
        "server_cpus": cpu_budget.cores if cpu_budget else None,
        "workers": workers,
        **result,
    }


@dataclass
class Mark:
    """The server's threads (and its CPU budget's throttling) at one moment."""

    t: float
    tasks: dict | None
    throttled: tuple[int, float] | None


class StepDriver:
    """Drives one Locust run against a running server: samples, marks, judges, stops."""

    def __init__(
        self,
        name: str,
        options: RunOptions,
        server: ServerProcess,
        plan: StepPlan,
        window: float,
        pinning: Pinning,
        cpu_budget: CpuBudget | None,
    ) -> None:
        self.name = name
        self.pinning = pinning
        self.options = options
        self.server = server
        self.plan = plan
        self.steps = plan.steps()
        self.window = window
        self.cpu_budget = cpu_budget
        self.samples: list[dict] = []
        self.rows: list[steps.StepRow] = []
        self.marks: dict[tuple[int, str], Mark] = {}  # (step, "from" | "to")
        self.t0: float | None = None
        self.settled: dict[int, bool] = {}
        self.churning = options.scenario == "churn"  # connections come and go by design
        self.locust_rss_at_start: int | None = None

    # -- measuring -------------------------------------------------------------

    def mark(self) -> Mark:
        tasks: dict = {}
        for proc in sampler.process_tree(self.server.pid):
            times = schedstat.task_times(proc.pid) or {}
            tasks.update({(proc.pid, tid): v for tid, v in times.items()})
        throttled = self.cpu_budget.throttled() if self.cpu_budget else None
        return Mark(time.time(), tasks or None, throttled)

    def _due_marks(self, sample: dict) -> None:
        """Mark the start and the end of each step's judged window as it passes.

        The window starts ``window`` s before the step's end, but not before the
        server holds the step's connections (99 %): a ramp the clients or the
        server could not keep up with is not judged as steady state. A step that
        never settles is judged on its last ``MIN_WINDOW`` s (and says so).
        """
        now = sample["t"]
        connections = steps._get(sample, "server", "connections") or 0
        for step in self.steps:
            planned = self.t0 + max(step.ramp_end, step.end - self.window)
            end = self.t0 + step.end
            if (step.index, "from") not in self.marks and now >= planned:
                settled = self.churning or connections >= SETTLED * step.users
                if settled or now >= end - MIN_WINDOW:
                    self.marks[step.index, "from"] = self.mark()
                    self.settled[step.index] = settled
            if now >= end and (step.index, "to") not in self.marks:
                self.marks[step.index, "to"] = self.mark()

    def judge(self, index: int, end: float | None = None, exited: bool = False) -> None:
        """Reduce step ``index`` to a row (cut at ``end`` if it ended early) and print it."""
        step = self.steps[index]
        start, planned_end = self.t0 + step.start, self.t0 + step.end
        end = planned_end if end is None else min(end, planned_end)
        first = self.marks.get((index, "from"))
        window = end - first.t if first else min(self.window, end - (self.t0 + step.ramp_end))
        row = steps.summarize(
            index, step.users, start, end, max(1.0, window), self.samples,
            self.options.profile.limits, exited=exited,
        )  # fmt: skip
        row = replace(
            row,
            ramp_end=self.t0 + step.ramp_end,
            run=self.name,
            settled=self.settled.get(index, False),
            judged_from=end - max(1.0, window),
            **evidence(self.marks.get((index, "from")), self.marks.get((index, "to")), row),
        )
        self.rows.append(row)
        _step_line(self.options, row, len(self.steps))

    # -- the run -----------------------------------------------------------------

    def run(self, metrics_urls: list[str], command: list[str], exporter_port: int) -> dict:
        out = self.options.out_dir
        sample_file = open(out / f"{self.name}-samples.jsonl", "w")  # noqa: SIM115
        sam = sampler.Sampler(
            metrics_urls,
            f"http://127.0.0.1:{exporter_port}/metrics",
            self.options.latency_name,
            # A scrape waits as long as the silence that makes a server unresponsive: the
            # label says /metrics did not answer for that long, not that it was slow.
            scrape_timeout=self.options.profile.limits.server_silent_s,
        )

        def take() -> dict:
            sample = sam.sample()
            self.samples.append(sample)
            sample_file.write(json.dumps(sample) + "\n")
            return sample

        baseline = take()
        locust_log = open(out / f"{self.name}-locust.log", "wb")  # noqa: SIM115
        try:
            locust = subprocess.Popen(
                command, cwd=PROJECT_ROOT, stdout=locust_log, stderr=subprocess.STDOUT
            )
        except OSError:
            locust_log.close()
            sample_file.close()
            raise
        sam.watch_locust(locust.pid)
        budget = f"; server CPU budget {self.cpu_budget.describe()}" if self.cpu_budget else ""
        say(
            self.options,
            f"{self.name}: server pid {self.server.pid}, Locust pid {locust.pid}; "
            f"{self.pinning.why}{budget}",
        )
        try:
            stop_reason = self._loop(locust, take)
        finally:
            trees = sampler.process_tree(locust.pid) + sampler.process_tree(self.server.pid)
            locust_exit = _stop(locust)
            server_exit = self.server.stop()
            _kill_leftovers(trees)
            locust_log.close()
            sample_file.close()

        _add_locust_percentiles(
            self.rows, out / f"{self.name}-locust_stats_history.csv", self.options.latency_name
        )
        finished = len(self.rows) == len(self.steps)
        limit = steps.verdict(self.rows, self.options.profile.limits, finished)
        say(self.options, f"{self.name}: {_limit_text(limit)} (stopped: {stop_reason})")
        return {
            "baseline": baseline["server"],
            "locust_rss_at_start": self.locust_rss_at_start,
            "steps": self.rows,
            "limit": limit,
            "stop_reason": stop_reason,
            "locust_exit": locust_exit,
            "server_exit": server_exit,
            "server_log_tail": (self.server.log_tail(2000) if server_exit not in (0, -15) else ""),
            "locust_failures": _locust_failures(out / f"{self.name}-locust_failures.csv"),
            "files": sorted(p.name for p in out.glob(f"{self.name}-*")),
        }

    def _loop(self, locust: subprocess.Popen, take: Callable[[], dict]) -> str:
        """Sample once a second until the plan ends or the rows decide the run; return why
        it stopped."""
        started = time.time()
        deadline = started + STARTUP_GRACE + self.plan.duration + 15
        next_progress = 0.0
        while True:
            sample = take()
            now = sample["t"]
            if self.t0 is None and not self._started(sample):
                if locust.poll() is not None or now - started > STARTUP_GRACE:
                    return "Locust did not start"
                time.sleep(0.2)
                continue
            self._due_marks(sample)
            self._judge_ended(now)
            stop = self._stop_reason(locust, now)
            if stop is None and now > deadline:
                stop = "deadline"
            if stop is not None:
                return stop
            if now >= next_progress:
                next_progress = now + self.options.progress_every
                self._progress()
            time.sleep(max(0.0, 1.0 - (time.time() - now)))

    def _started(self, sample: dict) -> bool:
        """Whether Locust's first user has started; sets the plan's time zero when it has."""
        if not steps._get(sample, "locust", "users"):
            return False
        self.t0 = sample["t"] - 0.1  # polled every 0.2 s until here: the shape's start
        self.locust_rss_at_start = sample.get("locust_rss")
        return True

    def _judge_ended(self, now: float) -> None:
        """Judge every step that has ended (1 s of slack so that its last sample is in)."""
        while len(self.rows) < len(self.steps):
            if now < self.t0 + self.steps[len(self.rows)].end + 1:
                break
            self.judge(len(self.rows))

    def _stop_reason(self, locust: subprocess.Popen, now: float) -> str | None:
        """Why the run must stop now (None: it goes on). A server that exited, a limit or
        too many invalid steps, the last step judged, or Locust gone; the step that was
        under way when the server or Locust went is judged up to now."""
        count = len(self.steps)
        if self.server.proc.poll() is not None:
            if len(self.rows) < count:  # the step it died in, cut short
                self.marks.setdefault((len(self.rows), "to"), self.mark())
                self.judge(len(self.rows), end=now, exited=True)
            return f"server exited with {self.server.proc.returncode}"
        if steps.should_stop(self.rows, self.options.profile.limits):
            return next(
                (r.reason for r in self.rows if r.outcome == steps.Outcome.LIMIT),
                self.rows[-1].reason,
            )
        if len(self.rows) == count:
            return "last step done"
        if locust.poll() is not None:
            # The shape ends Locust at the end of its last step: judge what is left.
            while (
                len(self.rows) < count
                and now > self.t0 + self.steps[len(self.rows)].ramp_end + self.window / 2
            ):
                self.marks.setdefault((len(self.rows), "to"), self.mark())
                self.judge(len(self.rows), end=now)
            return f"Locust exited with {locust.returncode}"
        return None

    def _progress(self) -> None:
        """One line: server, step, users, p99 and deliveries/s over the last few seconds."""
        options, samples = self.options, self.samples
        last = samples[-1]
        earlier = steps.at(samples, last["t"] - options.progress_every)
        latency = prom.delta(
            steps._get(last, "locust", "latency"), steps._get(earlier, "locust", "latency")
        )
        p99 = prom.quantile(0.99, latency)
        deliveries = steps._rate(earlier, last, "delivered")
        cpu = steps._rate(earlier, last, "cpu_seconds")
        elapsed = last["t"] - self.t0
        index = next((s.index for s in self.steps if elapsed < s.end), len(self.steps) - 1)
        users = steps._get(last, "locust", "users")
        budget = f"/{self.cpu_budget.cores:g}" if self.cpu_budget else ""
        say(
            options,
            f"{self.name:<9} step {index + 1}/{len(self.steps)}  users {_num(users)}"
            f"  conns {_num(steps._get(last, 'server', 'connections'))}"
            f"  p99 {options.latency_name} {_ms(p99)}"
            f"  deliveries/s {_num(deliveries)}"
            f"  server CPU {_cores(cpu)}{budget}  Locust CPU {_num(last.get('locust_cpu'))}%",
        )


def evidence(first: Mark | None, last: Mark | None, row: steps.StepRow) -> dict:
    """Why a step went as it did, from two marks of the server's threads: exact CPU,
    time spent waiting to run, context switches per delivery, throttling, busiest thread."""
    out = {
        "thread_cpu_seconds": None, "busiest_thread_share": None, "cpu_cores_exact": None,
        "wait_to_run_per_s": None, "voluntary_switches_per_delivery": None,
        "involuntary_switches_per_delivery": None, "throttled_per_s": None,
    }  # fmt: skip
    if first is None or last is None or last.t <= first.t:
        return out
    seconds = last.t - first.t
    delta = schedstat.task_delta(last.tasks, first.tasks)
    out["thread_cpu_seconds"] = delta["cpu_seconds"]
    out["busiest_thread_share"] = delta["busiest_share"]
    if delta["cpu_seconds"] is not None:
        out["cpu_cores_exact"] = delta["cpu_seconds"] / seconds
        out["wait_to_run_per_s"] = delta["wait_seconds"] / seconds
        deliveries = (row.deliveries_per_s or 0) * seconds
        if deliveries > 0:
            out["voluntary_switches_per_delivery"] = delta["voluntary"] / deliveries
            out["involuntary_switches_per_delivery"] = delta["involuntary"] / deliveries
    if first.throttled and last.throttled:
        out["throttled_per_s"] = (last.throttled[1] - first.throttled[1]) / seconds
    return out


def _kill_leftovers(procs: list[psutil.Process]) -> None:
    """SIGKILL what is left of stopped process trees: workers that outlived their
    supervisor or master would hold ports, CPU and connections into the next run
    (psutil checks that each pid is still the process it was)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()


def _locust_failures(path: Path) -> list[dict]:
    """Locust's failure table (name, error, occurrences), most frequent first."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = [
            {"name": r["Name"], "error": r["Error"], "occurrences": int(r["Occurrences"])}
            for r in csv.DictReader(handle)
        ]
    return sorted(rows, key=lambda r: -r["occurrences"])[:10]


def _stop(locust: subprocess.Popen) -> int:
    """SIGTERM Locust (it stops its users and writes its CSVs); kill it if it hangs."""
    return stop_process(locust, signal.SIGTERM, STOP_GRACE)


def _step_line(options: RunOptions, row: steps.StepRow, count: int) -> None:
    say(
        options,
        f"  step {row.index + 1}/{count} done: {row.users_target} users, "
        f"p99 {_ms(_s(row.latency_p99_ms))}, deliveries/s {_num(row.deliveries_per_s)}, "
        f"failures {100 * row.failure_ratio:.2f}% -> {row.outcome}"
        + (f" ({row.reason})" if row.reason else ""),
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


def _add_locust_percentiles(rows: list[steps.StepRow], history: Path, name: str) -> None:
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
        before = [p for p in points if p[0] <= row.end]
        if before:
            _, row.locust_p50_ms, row.locust_p99_ms = before[-1]


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None
