"""One process of the asyncio server: the whole server, or one worker of ``--workers N``."""

from __future__ import annotations

import asyncio

from async_server.server import ChatServer
from common.config import ServerConfig, configure_logging


def serve(config: ServerConfig) -> None:
    """Run one server process until SIGTERM or SIGINT."""
    configure_logging(config.log_level)
    server = ChatServer(config)
    if config.loop == "uvloop":
        import uvloop

        uvloop.run(server.run())
    else:
        asyncio.run(server.run())
