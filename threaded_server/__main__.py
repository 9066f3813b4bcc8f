"""``python -m threaded_server``: run the threaded server (``--workers N``: N processes)."""

from __future__ import annotations

import sys

from common.config import configure_logging, parse_config
from supervisor import supervise
from threaded_server.workers import serve

DEFAULT_PORT = 8001
DEFAULT_METRICS_PORT = 9101


def main(argv: list[str] | None = None) -> int:
    config = parse_config("threaded", DEFAULT_PORT, DEFAULT_METRICS_PORT, argv)
    configure_logging(config.log_level)
    if config.workers > 1:
        return supervise(config, serve)
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
