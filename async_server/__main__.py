"""``python -m async_server``: run the asyncio server (``--workers N``: N processes)."""

from __future__ import annotations

import sys

from async_server.workers import serve
from common.config import configure_logging, parse_config
from supervisor import supervise

DEFAULT_PORT = 8002
DEFAULT_METRICS_PORT = 9102


def main(argv: list[str] | None = None) -> int:
    config = parse_config("async", DEFAULT_PORT, DEFAULT_METRICS_PORT, argv)
    configure_logging(config.log_level)
    if config.workers > 1:
        return supervise(config, serve)
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
