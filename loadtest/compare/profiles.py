"""Profiles (how long and how far to step) and the thresholds that decide a limit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from common.capacity import fd_limit


@dataclass(frozen=True)
class StepRules:
    """When a step counts as the server's limit, or as invalid. Shown in the report."""

    slo_ms: float = 500.0  # p99 of the scenario latency (fanout) above this: limit
    slo_quantile: float = 0.99
    max_failure_ratio: float = 0.01  # failures / requests in a step above this: limit
    max_connect_failure_ratio: float = 0.01  # failed / attempted connects: "refused"
    locust_cpu_saturated: float = 90.0  # % of one core, mean over the step window: invalid
    invalid_steps_to_stop: int = 2  # consecutive invalid steps: the load generator is the limit
    server_silent_s: float = 5.0  # no /metrics answer for this long: the server counts as dead
    max_memory_share: float = 0.8  # server RSS (all its processes) above this share of RAM: limit
    # False: the run measures the load generator (Locust capacity), so latency and failures
    # never make a step the server's limit; Locust's CPU and the hard limits still decide.
    judge_server: bool = True


@dataclass(frozen=True)
class Profile:
    """How a run finds a server's limit.

    The climb: ``start`` users, then ``growth`` times as many at each step, up
    to ``maximum``; each step ramps at ``spawn_rate`` users/s and is then held
    ``step_time`` s, judged on the last ``window`` s of the hold. After the first
    (confirmed) breach, the narrowing probes the geometric middle between the
    last good users and the breach, each on a freshly started server, until the
    two are within ``precision`` of each other. ``probe_time`` > 0 adds, per
    server, a short run with nothing pinned and no CPU budget, at about the load
    one whole core would carry (the GIL and "true parallelism" claims).

    ``climb``, when given, replaces the geometric climb with these user
    counts. ``spread`` runs each server as several processes on Redis and
    Locust as as many processes, each from its own source address, as the
    per-process fd limit requires for ``maximum`` users, nothing pinned and no
    CPU budget (the c100k profile; :func:`processes_for`).
    """

    name: str
    start: int
    growth: float
    maximum: int
    step_time: float
    window: float
    spawn_rate: float = 500.0
    precision: float = 0.11
    probe_time: float = 0.0
    limits: StepRules = StepRules()
    climb: tuple[int, ...] = ()
    spread: bool = False

    def levels(self) -> list[int]:
        """The climb's user counts."""
        if self.climb:
            return [n for n in self.climb if n < self.maximum] + [self.maximum]
        out, users = [], float(self.start)
        while round_users(users) < self.maximum:
            out.append(round_users(users))
            users *= self.growth
        out.append(self.maximum)
        return out

    def narrowed(self, low: int, high: int) -> int | None:
        """The next user count to probe between a good ``low`` and a breached ``high``,
        or None once they are within the precision."""
        if high <= low * (1 + self.precision):
            return None
        middle = round_users((low * high) ** 0.5)
        return middle if low < middle < high else None

    def with_steps(self, **changes) -> Profile:
        """A copy with some fields changed (command-line overrides)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "window" not in changes and "step_time" in changes:
            changes["window"] = default_window(changes["step_time"])
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return {**asdict(self), "levels": self.levels()}

    @property
    def processes(self) -> int:
        """Processes each side runs: 1, or with ``spread`` as many as ``maximum`` needs."""
        return processes_for(self.maximum) if self.spread else 1


def round_users(users: float) -> int:
    """A user count rounded to two or three significant figures (50s above 1,000)."""
    if users >= 1000:
        return int(round(users / 50) * 50)
    if users >= 100:
        return int(round(users / 10) * 10)
    return max(1, round(users))


def default_window(step_time: float) -> float:
    """The last 2/3 of a step, at most 40 s (Locust's own window is 10 s)."""
    return round(min(40.0, step_time * 2 / 3), 1)


def connection_ceiling() -> int:
    """Most users one run can hold: one fd each in the server and in Locust, plus slack."""
    return max(1000, (fd_limit() - 1000) // 1000 * 1000)


def processes_for(users: int) -> int:
    """Processes that hold ``users`` connections, each under :func:`connection_ceiling`."""
    return max(1, math.ceil(users / connection_ceiling()))


# A run that measures one Locust process, not the server: steps are ok until Locust's
# busiest process passes 90 % of a core, and the first such step ends the run.
LOCUST_CAPACITY_RULES = StepRules(judge_server=False, invalid_steps_to_stop=1)


def locust_capacity(
    name: str, levels: list[int], step_time: float, window: float, spawn_rate: float
) -> Profile:
    """The Locust capacity profile (``make loadtest-capacity``): ``levels`` users in turn,
    judged on Locust's CPU (:data:`LOCUST_CAPACITY_RULES`), run once (no narrowing)."""
    return Profile(
        name, start=levels[0], growth=1.0, maximum=levels[-1], step_time=step_time,
        window=window, spawn_rate=spawn_rate, climb=tuple(levels),
        limits=LOCUST_CAPACITY_RULES,
    )  # fmt: skip


C100K_CLIMB = (10_000, 20_000, 30_000, 40_000, 60_000, 80_000, 100_000)


def profile(name: str) -> Profile:
    top = connection_ceiling()
    if name == "smoke":  # under a minute for both servers: the test and CI
        return Profile(
            "smoke", start=20, growth=2, maximum=40, step_time=6, window=4, spawn_rate=40
        )
    if name == "quick":  # the default: about 10 minutes for both servers
        return Profile(
            "quick", start=500, growth=1.5, maximum=top, step_time=15, window=10, probe_time=15
        )
    if name == "full":  # long steps, finer growth, the knee to within 5 %
        return Profile(
            "full", start=500, growth=1.25, maximum=top, step_time=60, window=40,
            precision=0.05, probe_time=30,
        )  # fmt: skip
    if name == "c100k":  # idle connections up to 100,000: where each model's wall stands
        return Profile(
            "c100k", start=C100K_CLIMB[0], growth=1.5, maximum=C100K_CLIMB[-1], step_time=30,
            window=20, spawn_rate=250, precision=0.11, climb=C100K_CLIMB, spread=True,
        )  # fmt: skip
    raise ValueError(f"unknown profile {name!r}: smoke, quick, full or c100k")


PROFILES = ("smoke", "quick", "full", "c100k")
