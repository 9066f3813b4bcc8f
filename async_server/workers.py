"""Running the asyncio server: one process, or several sharing the port.

With ``--workers N`` (N > 1) the first process only supervises: it starts N
worker processes that share the chat port through SO_REUSEPORT (the kernel
spreads new connections over them), worker i serving metrics on
METRICS_PORT + i; it forwards SIGTERM/SIGINT to them and exits once they have.
Rooms are shared through the broker, which ``--workers > 1`` requires.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal

from async_server.server import ChatServer
from common.config import ServerConfig, configure_logging

logger = logging.getLogger("twinchat.async")


def serve(config: ServerConfig) -> None:
    """Run one server process until SIGTERM or SIGINT."""
    configure_logging(config.log_level)
    server = ChatServer(config)
    if config.loop == "uvloop":
        import uvloop

        uvloop.run(server.run())
    else:
        asyncio.run(server.run())


def supervise(config: ServerConfig) -> int:
    """Run ``config.workers`` worker processes; return 0 when all exited cleanly."""
    context = multiprocessing.get_context("spawn")
    workers = []
    for index in range(config.workers):
        worker_config = dataclasses.replace(
            config,
            worker_index=index,
            metrics_port=config.metrics_port + index if config.metrics_port else 0,
        )
        process = context.Process(target=serve, args=(worker_config,), name=f"worker-{index}")
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
