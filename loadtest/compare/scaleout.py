"""The scale-out run: the async server on Redis with 1 worker and with N workers.

Both servers run Python on one core at a time; several processes sharing rooms
through Redis is the standard way past that (docs/scaling.md). This run puts
the async server on a real ``redis-server`` (started here, on a free loopback
port) once with one worker and once with N = the CPUs the machine has, same
steps, nothing pinned (N processes need N CPUs; Locust and Redis share them),
so the report shows what processes buy that one event loop cannot.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from loadtest.compare import runner
from loadtest.redisproc import REDIS_SERVER, RedisProcess


def available() -> bool:
    """Whether a scale-out run can happen here (redis-server installed, 2+ CPUs)."""
    return REDIS_SERVER is not None and (os.cpu_count() or 1) >= 2


def workers_wanted() -> int:
    return os.cpu_count() or 1


def run(options: runner.RunOptions) -> dict:
    """Run the async server with 1 and N workers on one Redis; return both runs by name."""
    n = workers_wanted()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="twinchat-redis-") as data:
        redis = RedisProcess(Path(data))
        redis.start()
        try:
            for workers in (1, n):
                name = f"async-redis-{workers}w"
                runner.say(options, f"scale-out: {name} (async, --broker redis, {workers} workers)")
                redis.flush()
                runs[name] = runner.run_server(
                    "async",
                    options,
                    pin=False,
                    budget=False,
                    tag=f"-redis-{workers}w",
                    server_args=["--broker", redis.url],
                    workers=workers,
                )
                runs[name]["workers"] = workers
        finally:
            redis.stop()
    return runs
