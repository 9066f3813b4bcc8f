"""Profiles (how long and how far to step) and the thresholds that decide a limit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from common.capacity import fd_limit

SCENARIOS = ("chat", "idle", "broadcast", "churn")

# The latency that decides the SLO in each scenario (a Locust request name).
LATENCY_NAME = {"chat": "fanout", "broadcast": "fanout", "churn": "fanout", "idle": "ping"}


@dataclass(frozen=True)
class Limits:
    """When a step counts as the server's limit, or as invalid. Shown in the report."""

    slo_ms: float = 500.0  # p99 of the scenario latency (fanout) above this: limit
    slo_quantile: float = 0.99
    max_failure_ratio: float = 0.01  # failures / requests in a step above this: limit
    max_connect_failure_ratio: float = 0.01  # failed / attempted connects: "refused"
    locust_cpu_saturated: float = 90.0  # % of one core, mean over the step window: invalid
    invalid_steps_to_stop: int = 2  # consecutive invalid steps: the load generator is the limit
    server_silent_s: float = 5.0  # no /metrics answer for this long: the server counts as dead


@dataclass(frozen=True)
class Profile:
    """A stepped load: ``start``, ``start + step``, ... ``maximum`` users, ``step_time`` s each.

    Each step is judged on its last ``window`` seconds (the ramp and settling
    excluded). ``probe_time`` > 0 adds, per server, a short run with nothing
    pinned at the last step the server sustained, to see how many cores it uses
    when it may use them all (the GIL and "true parallelism" claims).
    """

    name: str
    start: int
    step: int
    maximum: int
    step_time: float
    window: float
    probe_time: float = 0.0
    limits: Limits = Limits()

    def levels(self) -> list[int]:
        out, users = [], self.start
        while users < self.maximum:
            out.append(users)
            users += self.step
        out.append(self.maximum)
        return out

    def with_steps(self, **changes) -> Profile:
        """A copy with some fields changed (command-line overrides)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "window" not in changes and "step_time" in changes:
            changes["window"] = default_window(changes["step_time"])
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return {**asdict(self), "levels": self.levels()}


def default_window(step_time: float) -> float:
    """The last 2/3 of a step, at most 40 s (Locust's own window is 10 s)."""
    return round(min(40.0, step_time * 2 / 3), 1)


def connection_ceiling() -> int:
    """Most users one run can hold: one fd each in the server and in Locust, plus slack."""
    return max(1000, (fd_limit() - 1000) // 1000 * 1000)


def profile(name: str) -> Profile:
    if name == "smoke":  # under a minute for both servers: the test and CI
        return Profile("smoke", start=20, step=20, maximum=40, step_time=6, window=4)
    if name == "quick":  # the default: a few minutes, up to several thousand users
        return Profile(
            "quick", start=750, step=750, maximum=6000, step_time=15, window=10, probe_time=15
        )
    if name == "full":  # long steps, up to what the machine's fd limit allows
        top = connection_ceiling()
        return Profile(
            "full", start=1000, step=1000, maximum=top, step_time=60, window=40, probe_time=30
        )
    raise ValueError(f"unknown profile {name!r}: smoke, quick or full")


PROFILES = ("smoke", "quick", "full")
