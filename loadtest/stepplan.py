"""A step plan: hold each user count long enough to read steady-state latency.

A step is a ramp (users started or stopped at the spawn rate) followed by a
hold of ``step_time`` seconds. The comparison runner computes the same
schedule from the same :class:`StepPlan`, so that it judges each step over its
hold, never over a ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Step:
    """One step of a plan, in seconds from the start of the test."""

    index: int
    users: int
    start: float
    ramp_end: float  # the step's users are all started here (at the planned rate)
    end: float


@dataclass(frozen=True)
class StepPlan:
    """Ramp to each of ``levels`` at ``spawn_rate`` users/s, then hold it ``step_time`` s.

    ``first_spawn_rate`` (> 0) is the rate of the first ramp, from zero users, instead:
    a narrowing run reaches a level the climb reached step by step in one ramp, and a
    gentler one keeps it from being a connect storm that no climb step was.
    """

    levels: tuple[int, ...]
    step_time: float
    spawn_rate: float
    first_spawn_rate: float = 0.0

    def __post_init__(self) -> None:
        if not self.levels or min(self.levels) <= 0:
            raise ValueError(f"invalid step plan {self}: every level needs at least one user")
        if self.step_time <= 0 or self.spawn_rate <= 0 or self.first_spawn_rate < 0:
            raise ValueError(f"invalid step plan {self}: step time and spawn rate must be > 0")

    @classmethod
    def linear(
        cls, start: int, step: int, maximum: int, step_time: float, spawn_rate: float = 0.0
    ) -> StepPlan:
        """``start``, ``start + step``, ... capped at ``maximum``; by default each step
        ramps in about one second (spawn rate = ``step`` users/s)."""
        if step <= 0 or start <= 0 or maximum < start:
            raise ValueError(f"invalid linear plan: start {start}, step {step}, max {maximum}")
        count = math.ceil((maximum - start) / step) + 1
        levels = tuple(min(start + i * step, maximum) for i in range(count))
        return cls(levels, step_time, spawn_rate or float(step))

    @classmethod
    def from_options(cls, options) -> StepPlan:
        """The plan of ``--step-levels`` or of ``--step-start/--step-users/--step-max``,
        its first ramp at ``--step-first-spawn-rate`` when given."""
        first = getattr(options, "step_first_spawn_rate", 0.0) or 0.0
        text = getattr(options, "step_levels", "") or ""
        if text:
            try:
                levels = tuple(int(part) for part in text.split(",") if part.strip())
            except ValueError:
                raise ValueError(
                    f"--step-levels {text!r}: expected user counts like 100,200"
                ) from None
            if not levels:
                raise ValueError("--step-levels names no user count")
            rises = [b - a for a, b in zip((0, *levels), levels, strict=False)]
            rate = options.step_spawn_rate or float(max(rises))
            return cls(levels, options.step_time, rate, first)
        step = options.step_users
        maximum = options.step_max or options.num_users or 0
        if not maximum:
            raise ValueError("the step shape needs --step-max (or -u) as its last user count")
        plan = cls.linear(
            options.step_start or step, step, maximum, options.step_time, options.step_spawn_rate
        )
        return replace(plan, first_spawn_rate=first)

    def steps(self) -> list[Step]:
        """Every step with its start, end of ramp and end."""
        out, t, users = [], 0.0, 0
        for index, level in enumerate(self.levels):
            ramp = abs(level - users) / self.rate_of(index)
            out.append(Step(index, level, t, t + ramp, t + ramp + self.step_time))
            t, users = t + ramp + self.step_time, level
        return out

    @property
    def duration(self) -> float:
        return self.steps()[-1].end

    def at(self, run_time: float) -> tuple[int, float] | None:
        """(users, spawn rate) at ``run_time`` seconds, or None once the last step is over."""
        for step in self.steps():
            if run_time < step.end:
                return step.users, self.rate_of(step.index)
        return None

    def rate_of(self, index: int) -> float:
        """Users started per second in the ramp of step ``index``."""
        return self.first_spawn_rate if index == 0 and self.first_spawn_rate else self.spawn_rate
