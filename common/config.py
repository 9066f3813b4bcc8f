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
from common.limits import Limits
from common.screening import SCREEN_IN, Screening


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a server needs to run, with the defaults of the flags."""

    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = 0
    limits: Limits = field(default_factory=Limits)
    # Connections the kernel queues before the server accepts them: both servers
    # use this one figure (asyncio's own default of 100 overflows under a ramp of
    # hundreds of connects per second, and an overflowed queue drops SYNs, which
    # the client only retries after 1 s, then 3 s).
    listen_backlog: int = 1024

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

    # Screening of says (off by default; rules in common/screening.py)
    screening: Screening = field(default_factory=Screening)

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
    """The command line of ``python -m <implementation>_server``.

    Every default is the one of :class:`ServerConfig` (and its :class:`Limits`),
    except the ports, which differ per server.
    """
    config = ServerConfig()
    limits = config.limits
    parser = argparse.ArgumentParser(
        prog=f"python -m {implementation}_server",
        description=f"twinchat, the {implementation} server: chat over WebSocket at /ws, "
        "a web page at /, health at /healthz, Prometheus metrics at "
        "http://HOST:METRICS_PORT/metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=config.host, help="address to listen on")
    net.add_argument("--port", type=int, default=port, help="chat port (WebSocket and HTTP)")
    net.add_argument(
        "--metrics-port", type=int, default=metrics_port, help="Prometheus port; 0 disables"
    )

    group = parser.add_argument_group("limits")
    group.add_argument(
        "--max-connections",
        type=int,
        default=config.max_connections,
        help="refuse connections past this many (503); 0, or more than the process can "
        "hold, means what the fd limit"
        + (" and the threads the machine can create" if implementation == "threaded" else "")
        + " allow",
    )
    group.add_argument("--max-frame-bytes", type=int, default=limits.max_frame_bytes)
    group.add_argument("--max-text-chars", type=int, default=limits.max_text_chars)
    group.add_argument(
        "--rate",
        type=float,
        default=limits.messages_per_second,
        help="messages per second per client",
    )
    group.add_argument(
        "--burst", type=int, default=limits.burst, help="messages a client may send at once"
    )
    group.add_argument(
        "--history-size", type=int, default=limits.history_size, help="messages kept per room"
    )
    group.add_argument(
        "--max-backlog-bytes",
        type=int,
        default=limits.max_backlog_bytes,
        help="unsent bytes after which a client that does not read is dropped",
    )

    timeouts = parser.add_argument_group("timeouts (seconds)")
    timeouts.add_argument(
        "--open-timeout", type=float, default=config.open_timeout, help="handshake deadline"
    )
    timeouts.add_argument(
        "--ping-interval", type=float, default=config.ping_interval, help="0 disables pings"
    )
    timeouts.add_argument("--ping-timeout", type=float, default=config.ping_timeout)
    timeouts.add_argument("--close-timeout", type=float, default=config.close_timeout)
    timeouts.add_argument(
        "--shutdown-timeout",
        type=float,
        default=config.shutdown_timeout,
        help="bound on a graceful shutdown",
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
        default=config.compression or "none",
        help="permessage-deflate costs CPU and memory per connection",
    )

    screen = parser.add_argument_group(
        "screening of says (off by default; see common/screening.py)"
    )
    screen.add_argument(
        "--moderation-url",
        default=None,
        metavar="URL",
        help="POST each say's text to this moderation service (a blocking urllib call) "
        "before accepting it; no answer within --moderation-timeout: the sender gets "
        "'unavailable' and the message is not sent",
    )
    screen.add_argument(
        "--moderation-timeout",
        type=float,
        default=config.screening.moderation_timeout,
        help="seconds for one moderation call",
    )
    screen.add_argument(
        "--say-cpu-ms",
        type=float,
        default=config.screening.say_cpu_ms,
        help="run a pure-Python content filter over each say for this many ms of CPU (0: off)",
    )
    if implementation == "async":
        screen.add_argument(
            "--screen-in",
            choices=SCREEN_IN,
            default=config.screening.screen_in,
            help="where screening runs: on the event loop (blocking every connection while it "
            "runs) or in a worker thread (asyncio.to_thread)",
        )

    scale = parser.add_argument_group("scale-out")
    scale.add_argument(
        "--broker",
        default=config.broker,
        metavar="URL",
        help="where rooms live: 'memory' (this process only) or redis://host:port/db "
        "(shared by every process on that Redis)",
    )

    scale.add_argument(
        "--workers",
        type=int,
        default=config.workers,
        help="processes sharing the chat port (SO_REUSEPORT); worker i serves "
        "metrics on METRICS_PORT+i; more than 1 needs --broker redis://...",
    )

    model = parser.add_argument_group(f"{implementation} server")
    if implementation == "async":
        model.add_argument("--loop", choices=["uvloop", "asyncio"], default=config.loop)
    else:
        model.add_argument(
            "--thread-stack-kib",
            type=int,
            default=config.thread_stack_kib,
            help="stack size of connection threads",
        )
    parser.add_argument(
        "--log-level", default=config.log_level, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def parse_config(
    implementation: str, port: int, metrics_port: int, argv: list[str] | None = None
) -> ServerConfig:
    """Parse ``argv`` into a :class:`ServerConfig`, exiting with usage on bad flags."""
    parser = build_parser(implementation, port, metrics_port)
    args = parser.parse_args(argv)
    defaults = ServerConfig()
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
    try:
        screening = Screening(
            moderation_url=args.moderation_url,
            moderation_timeout=args.moderation_timeout,
            say_cpu_ms=args.say_cpu_ms,
            screen_in=getattr(args, "screen_in", defaults.screening.screen_in),
        )
    except ValueError as exc:
        parser.error(str(exc))
    stack = getattr(args, "thread_stack_kib", defaults.thread_stack_kib)
    if stack < 32:
        parser.error("--thread-stack-kib must be at least 32")
    try:
        broker = check_broker_url(args.broker)
    except ValueError as exc:
        parser.error(str(exc))
    workers = args.workers
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
        screening=screening,
        broker=broker,
        workers=workers,
        loop=getattr(args, "loop", defaults.loop),
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
