"""``python -m async_server``: run the asyncio twinchat server."""

from __future__ import annotations

import asyncio
import sys

from async_server.server import ChatServer
from common.config import configure_logging, parse_config

DEFAULT_PORT = 8002
DEFAULT_METRICS_PORT = 9102


def main(argv: list[str] | None = None) -> int:
    config = parse_config("async", DEFAULT_PORT, DEFAULT_METRICS_PORT, argv)
    configure_logging(config.log_level)
    server = ChatServer(config)
    if config.loop == "uvloop":
        import uvloop

        uvloop.run(server.run())
    else:
        asyncio.run(server.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
