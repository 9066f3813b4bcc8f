"""Command-line configuration shared by both servers.

Both servers take the same flags (each adds the few that only make sense for
its model), so a benchmark can start either one with one command line.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

from common.broker import check_broker_url
from common.capacity import default_max_connections
from common.limits import KIB, MIB, Limits


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server needs to run, with the defaults of the flags."""

    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = 0
    limits: Limits = field(default_factory=Limits)

    # Limits
    max_connections: int = 0  # 0: derive from the fd (and thread) limit

    # Timeouts
    open_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 2.0
    shutdown_timeout: float = 5.0

    # Security
    allowed_origins: tuple[str, ...] = ()
    compression: str | None = None

    # Scale-out
    broker: str = "memory"
    workers: int = 1
    worker_index: int = 0

    # Model-specific
    loop: str = "uvloop"
    thread_stack_kib: int = 256

    log_level: str = "INFO"

    @property
    def origins(self) -> list[str] | None:
        """What the websockets library's ``origins`` argument wants."""
        return list(self.allowed_origins) or None


def build_parser(implementation: str, port: int, metrics_port: int) -> argparse.ArgumentParser:
    """The command line of ``python -m <implementation>_server``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {implementation}_server",
        description=f"twinchat, the {implementation} server: chat over WebSocket at /ws, "
        "a web page at /, health at /healthz, Prometheus metrics at "
        "http://HOST:METRICS_PORT/metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on")
    net.add_argument("--port", type=int, default=port, help="chat port (WebSocket and HTTP)")
    net.add_argument(
        "--metrics-port", type=int, default=metrics_port, help="Prometheus port; 0 disables"
    )

    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="refuse connections past this many (503); 0, or more than the process can "
        "hold, means what the fd limit"
        + (" and the threads the machine can create" if implementation == "threaded" else "")
        + " allow",
    )
    limits.add_argument("--max-frame-bytes", type=int, default=64 * KIB)
    limits.add_argument("--max-text-chars", type=int, default=4096)
    limits.add_argument("--rate", type=float, default=20.0, help="messages per second per client")
    limits.add_argument("--burst", type=int, default=40, help="messages a client may send at once")
    limits.add_argument("--history-size", type=int, default=100, help="messages kept per room")
    limits.add_argument(
        "--max-backlog-bytes",
        type=int,
        default=1 * MIB,
        help="unsent bytes after which a client that does not read is dropped",
    )

    timeouts = parser.add_argument_group("timeouts (seconds)")
    timeouts.add_argument("--open-timeout", type=float, default=10.0, help="handshake deadline")
    timeouts.add_argument("--ping-interval", type=float, default=20.0, help="0 disables pings")
    timeouts.add_argument("--ping-timeout", type=float, default=20.0)
    timeouts.add_argument("--close-timeout", type=float, default=2.0)
    timeouts.add_argument(
        "--shutdown-timeout", type=float, default=5.0, help="bound on a graceful shutdown"
    )

    security = parser.add_argument_group("security")
    security.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="accept handshakes only from this Origin (repeatable); default: any",
    )
    security.add_argument(
        "--compression",
        choices=["none", "deflate"],
        default="none",
        help="permessage-deflate costs CPU and memory per connection",
    )

    scale = parser.add_argument_group("scale-out")
    scale.add_argument(
        "--broker",
        default="memory",
        metavar="URL",
        help="where rooms live: 'memory' (this process only) or redis://host:port/db "
        "(shared by every process on that Redis)",
    )

    model = parser.add_argument_group(f"{implementation} server")
    if implementation == "async":
        model.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
        model.add_argument(
            "--workers",
            type=int,
            default=1,
            help="processes sharing the chat port (SO_REUSEPORT); worker i serves "
            "metrics on METRICS_PORT+i; more than 1 needs --broker redis://...",
        )
    else:
        model.add_argument(
            "--thread-stack-kib", type=int, default=256, help="stack size of connection threads"
        )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def parse_config(
    implementation: str, port: int, metrics_port: int, argv: list[str] | None = None
) -> ServerConfig:
    """Parse ``argv`` into a :class:`ServerConfig`, exiting with usage on bad flags."""
    parser = build_parser(implementation, port, metrics_port)
    args = parser.parse_args(argv)
    try:
        limits = Limits(
            max_frame_bytes=args.max_frame_bytes,
            max_text_chars=args.max_text_chars,
            messages_per_second=args.rate,
            burst=args.burst,
            flood_tolerance=args.burst,
            history_size=args.history_size,
            max_backlog_bytes=args.max_backlog_bytes,
        )
    except ValueError as exc:
        parser.error(str(exc))
    stack = getattr(args, "thread_stack_kib", 256)
    if stack < 32:
        parser.error("--thread-stack-kib must be at least 32")
    try:
        broker = check_broker_url(args.broker)
    except ValueError as exc:
        parser.error(str(exc))
    workers = getattr(args, "workers", 1)
    if workers < 1:
        parser.error("--workers must be at least 1")
    if workers > 1 and broker == "memory":
        parser.error(
            "--workers > 1 needs a shared broker: rooms in memory would differ per worker; "
            "add --broker redis://127.0.0.1:6379/0"
        )
    # More than the process can hold would end in accept() failing instead of a 503.
    capacity = default_max_connections(threads=implementation == "threaded")
    max_connections = min(args.max_connections or capacity, capacity)
    return ServerConfig(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        limits=limits,
        max_connections=max_connections,
        open_timeout=args.open_timeout,
        ping_interval=args.ping_interval or None,
        ping_timeout=args.ping_timeout or None,
        close_timeout=args.close_timeout,
        shutdown_timeout=args.shutdown_timeout,
        allowed_origins=tuple(args.allowed_origin),
        compression=None if args.compression == "none" else args.compression,
        broker=broker,
        workers=workers,
        loop=getattr(args, "loop", "threads"),
        thread_stack_kib=stack,
        log_level=args.log_level,
    )


def configure_logging(level: str) -> None:
    """Log to stderr; the servers log connection events, never single messages."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The servers log opens and closes themselves, with the session id.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLevelName(level)))
