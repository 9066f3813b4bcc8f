"""``--workers N`` for both servers: N processes of one server sharing one port.

The first process only supervises: it starts N worker processes that each
listen on the chat port with ``SO_REUSEPORT``, so the kernel spreads new
connections over them (a socket option, not a property of threads or
asyncio). Worker i serves metrics on ``METRICS_PORT + i``. The supervisor
forwards SIGTERM and SIGINT to the workers and exits once they have; a worker
whose supervisor dies (killed, crashed) gets SIGTERM from the kernel and shuts
down as on any SIGTERM, so no worker outlives its server. Rooms
are shared through the broker, which ``--workers > 1`` requires
(:func:`common.config.parse_config` checks).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable

from common.config import ServerConfig

logger = logging.getLogger("twinchat.supervisor")


def supervise(config: ServerConfig, serve: Callable[[ServerConfig], None]) -> int:
    """Run ``serve`` in ``config.workers`` processes; return 0 when all exited cleanly.

    ``serve(config)`` runs one server process until SIGTERM or SIGINT; it must
    be a module-level function (the workers are spawned, not forked).
    """
    context = multiprocessing.get_context("spawn")
    workers = []
    for index in range(config.workers):
        worker_config = dataclasses.replace(
            config,
            worker_index=index,
            metrics_port=config.metrics_port + index if config.metrics_port else 0,
        )
        process = context.Process(
            target=run_worker, args=(serve, worker_config, os.getpid()), name=f"worker-{index}"
        )
        process.start()
        workers.append(process)
    logger.info("started %d workers on port %d", len(workers), config.port)

    def forward(signum: int, _frame: object) -> None:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in workers:
        process.join()
    codes = [process.exitcode for process in workers]
    logger.info("workers exited with %s", codes)
    return 0 if all(code == 0 for code in codes) else 1


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def run_worker(serve: Callable[[ServerConfig], None], config: ServerConfig, parent: int) -> None:
    """A worker's entry point: ask for SIGTERM when the supervisor dies, then ``serve``."""
    term_with_parent(parent)
    serve(config)


def term_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when ``parent`` exits (Linux; elsewhere
    nothing). If ``parent`` is already gone, SIGTERM now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:
        logger.warning("a worker will not stop by itself if its supervisor dies: %s", exc)
        return
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)
