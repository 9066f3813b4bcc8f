"""Step load shape: Locust follows a :class:`~loadtest.stepplan.StepPlan`.

Active only when ``--step-users`` or ``--step-levels`` is given (see
``loadtest/locustfile.py``); otherwise the plain ``-u/-r/-t`` apply. This module
is imported as a module, never ``from ... import StepLoadShape`` into a
locustfile, so that Locust does not pick the shape up by itself. The plan
itself lives in ``loadtest/stepplan.py``, which imports no Locust: the
comparison runner and the tests use it without Locust's gevent patching.
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtest.stepplan import StepPlan

__all__ = ["StepLoadShape", "StepPlan"]


class StepLoadShape(LoadTestShape):
    """A LoadTestShape that follows a :class:`StepPlan`, then stops the test."""

    def __init__(self, plan: StepPlan) -> None:
        super().__init__()
        self.plan = plan

    def tick(self) -> tuple[int, float] | None:
        return self.plan.at(self.get_run_time())
