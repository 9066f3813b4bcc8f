"""Step load shape: hold each user count long enough to read steady-state latency.

Active only when ``--step-users`` is given (see ``loadtest/locustfile.py``);
otherwise the plain ``-u/-r/-t`` apply. This module is imported as a module,
never ``from ... import StepLoadShape`` into a locustfile, so that Locust does
not pick the shape up by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from locust import LoadTestShape


@dataclass(frozen=True)
class StepPlan:
    """Users ``start``, ``start + step``, ... up to ``maximum``, each held ``step_time`` s."""

    start: int
    step: int
    step_time: float
    maximum: int
    spawn_rate: float

    def __post_init__(self) -> None:
        if self.step <= 0 or self.start <= 0 or self.maximum < self.start:
            raise ValueError(f"invalid step plan {self}: need 0 < start <= max and step > 0")
        if self.step_time <= 0 or self.spawn_rate <= 0:
            raise ValueError(f"invalid step plan {self}: step time and spawn rate must be > 0")

    @classmethod
    def from_options(cls, options) -> StepPlan:
        step = options.step_users
        maximum = options.step_max or options.num_users or 0
        if not maximum:
            raise ValueError("the step shape needs --step-max (or -u) as its last user count")
        return cls(
            start=options.step_start or step,
            step=step,
            step_time=options.step_time,
            maximum=maximum,
            spawn_rate=options.step_spawn_rate or float(step),
        )

    def levels(self) -> list[int]:
        """User counts of all steps, in order."""
        count = math.ceil((self.maximum - self.start) / self.step) + 1
        return [min(self.start + i * self.step, self.maximum) for i in range(count)]

    @property
    def duration(self) -> float:
        return len(self.levels()) * self.step_time

    def at(self, run_time: float) -> tuple[int, float] | None:
        """(users, spawn rate) at ``run_time`` seconds, or None once the last step is over."""
        levels = self.levels()
        index = int(run_time // self.step_time)
        if index >= len(levels):
            return None
        return levels[index], self.spawn_rate


class StepLoadShape(LoadTestShape):
    """A LoadTestShape that follows a :class:`StepPlan`, then stops the test."""

    def __init__(self, plan: StepPlan) -> None:
        super().__init__()
        self.plan = plan

    def tick(self) -> tuple[int, float] | None:
        return self.plan.at(self.get_run_time())
