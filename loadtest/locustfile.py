"""twinchat locustfile: ``locust --config loadtest/locust.conf --scenario chat -H ws://...``.

Picks the scenario user class from ``--scenario`` (unless User classes are
named on the command line), turns on the step shape when ``--step-users`` is
given, and installs the Prometheus exporter and CPU saturation guard.
See docs/loadtest.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# `locust -f loadtest/locustfile.py` puts loadtest/ on sys.path, not the project root.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from locust import events, runners  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

from loadtest import exporter, locustfix, options  # noqa: E402
from loadtest import shape as step_shape  # noqa: E402  (module import: see shape.py)
from loadtest.users import (  # noqa: E402, F401  (imported so Locust finds the classes)
    USER_CLASSES,
    BroadcastUser,
    ChatUser,
    ChurnUser,
    IdleUser,
)

logger = logging.getLogger("loadtest")

locustfix.install()  # before --processes forks the workers, which inherit it


@events.init_command_line_parser.add_listener
def _add_options(parser, **_kwargs) -> None:
    options.add_arguments(parser)


@events.init.add_listener
def _on_init(environment, runner, **_kwargs) -> None:
    opts = environment.parsed_options
    if opts is None:  # library use without a command line
        return
    worker = isinstance(runner, WorkerRunner)
    if isinstance(runner, MasterRunner) and opts.heartbeat_liveness > 0:
        # Locust has no option for it: the master reads this module constant at each check.
        runners.HEARTBEAT_LIVENESS = opts.heartbeat_liveness
    # Workers keep every class: the master tells them which ones to spawn.
    if not worker and not opts.user_classes:
        environment.user_classes[:] = [USER_CLASSES[opts.scenario]]
        logger.info("scenario %s (%s)", opts.scenario, USER_CLASSES[opts.scenario].__name__)
    if not worker and (opts.step_users or opts.step_levels):
        try:
            plan = step_shape.StepPlan.from_options(opts)
        except ValueError as exc:
            logger.error("%s", exc)
            sys.exit(2)
        shape = step_shape.StepLoadShape(plan)
        shape.runner = runner
        environment.shape_class = shape
        logger.info(
            "step shape: users %s, %.0f s each (%.0f s in all), spawn rate %.0f/s (first %.0f/s)",
            list(plan.levels),
            plan.step_time,
            plan.duration,
            plan.spawn_rate,
            plan.rate_of(0),
        )
        if opts.run_time and opts.run_time < plan.duration:
            logger.warning(
                "-t %ss ends the run before the last step (%.0f s)", opts.run_time, plan.duration
            )
    exporter.install(environment, runner)
