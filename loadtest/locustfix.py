"""A workaround for a CPU cost in Locust's worker processes (Locust 2.47).

When a worker gets a ``spawn`` message from its master (several per second
while users ramp up), ``WorkerRunner.handle_message`` keeps the master's
custom options with a dict comprehension whose condition calls
``locust.argument_parser.default_args_dict()`` once per option: each call
builds and parses Locust's whole argument parser (2.2 ms here), and the
project's options make about 130 of them, so each spawn message cost a worker
about 0.3 s of CPU. py-spy on a worker ramping idle users at 2026-12-03 put
66 % of its CPU there, which made connecting look like 2-6 ms per user and
starved the servers it measured.

The defaults do not change while Locust runs, so :func:`install` makes the
function compute them once and return a copy on each call (a caller may
change what it gets). Remove this module when Locust computes the defaults
outside that comprehension.
"""

from __future__ import annotations

import functools

from locust import argument_parser


def install() -> None:
    """Make ``locust.argument_parser.default_args_dict`` compute its answer once. Idempotent."""
    original = argument_parser.default_args_dict
    if hasattr(original, "__wrapped__"):
        return
    computed = functools.cache(original)

    @functools.wraps(original)
    def default_args_dict() -> dict:
        return dict(computed())

    argument_parser.default_args_dict = default_args_dict
