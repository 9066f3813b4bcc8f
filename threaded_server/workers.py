"""One process of the threaded server: the whole server, or one worker of ``--workers N``."""

from __future__ import annotations

from common.config import ServerConfig, configure_logging
from threaded_server.server import ChatServer


def serve(config: ServerConfig) -> None:
    """Run one server process until SIGTERM or SIGINT."""
    configure_logging(config.log_level)
    ChatServer(config).run()
