"""The one command line that runs the project's Locust scenarios.

Every runner (``make loadtest``, the capacity and compare runs, the tests)
starts Locust the same way: this interpreter's ``locust`` module, the
project's ``loadtest/locust.conf`` (locustfile and defaults), the target host,
then the caller's own options, which override the config file's.
"""

from __future__ import annotations

import sys

from loadtest.serverproc import PROJECT_ROOT

LOCUST_CONF = PROJECT_ROOT / "loadtest" / "locust.conf"


def locust_command(host: str, *args: str) -> list[str]:
    """``python -m locust --config loadtest/locust.conf -H host *args``.

    Run it with ``cwd=PROJECT_ROOT``: the config names the locustfile relative
    to the project root.
    """
    return [sys.executable, "-m", "locust", "--config", str(LOCUST_CONF), "-H", host, *args]
