"""Command-line options of the twinchat locustfile (added through Locust's own parser).

Defaults live here and in ``loadtest/locust.conf``; every option can also be
set in that file (``room-size = 50``) or as ``LOCUST_ROOM_SIZE=50``.
"""

from __future__ import annotations

from loadtest import scenarios


def add_arguments(parser) -> None:
    """Register the twinchat options on Locust's argument parser."""
    # Locust's argument groups do not take include_in_web_ui: use the parser itself.
    group = parser

    # Scenario
    group.add_argument(
        "--scenario",
        choices=scenarios.NAMES,
        default=scenarios.DEFAULT,
        include_in_web_ui=False,
        help=f"Which user class to run: {', '.join(scenarios.NAMES)} (default "
        f"{scenarios.DEFAULT}). Ignored when User classes are named on the command line.",
    )
    # Rooms
    group.add_argument(
        "--room-size", type=int, default=25, help="Users per room (chat, churn, idle). Default 25."
    )
    group.add_argument(
        "--rooms", type=int, default=4, help="Number of big rooms (broadcast). Default 4."
    )
    group.add_argument(
        "--speakers",
        type=int,
        default=1,
        help="Speaking users per broadcast room and load-generator process. Default 1.",
    )
    group.add_argument(
        "--room-prefix",
        default="lt",
        help="Prefix of room and user names (to keep concurrent runs apart). Default lt.",
    )
    # Pacing
    group.add_argument(
        "--say-every",
        type=float,
        default=5.0,
        help="Seconds between two messages of one speaking user. Default 5.",
    )
    group.add_argument(
        "--ping-every",
        type=float,
        default=20.0,
        help="Seconds between heartbeat pings of idle/listening users. Default 20.",
    )
    group.add_argument(
        "--session-messages",
        type=int,
        default=3,
        help="Messages per session (churn). Default 3.",
    )
    group.add_argument(
        "--churn-wait",
        type=float,
        default=1.0,
        help="Pause in seconds between two sessions of one churn user. Default 1.",
    )
    group.add_argument(
        "--text-size", type=int, default=40, help="Characters per chat message. Default 40."
    )
    group.add_argument(
        "--source-address",
        default="",
        help="Local address the users' sockets leave from; load-generator process k (with "
        "--processes or workers) uses this address + k (127.0.0.2, 127.0.0.3, ...), so each "
        "process has its own ~28,000 ephemeral ports per server address. Default: none "
        "(the kernel chooses).",
    )
    # Timeouts
    group.add_argument(
        "--ws-timeout",
        type=float,
        default=10.0,
        help="Seconds to wait for connect, welcome and joined. Default 10.",
    )
    group.add_argument(
        "--close-timeout",
        type=float,
        default=2.0,
        help="Seconds to wait for the server's close frame when a user stops. Default 2.",
    )
    # Step load shape
    group.add_argument(
        "--step-users",
        type=int,
        default=0,
        help="Step shape: users added per step. 0 (default) disables the step shape "
        "and -u/-r/-t apply.",
    )
    group.add_argument(
        "--step-time",
        type=float,
        default=60.0,
        help="Step shape: seconds each step is held after its ramp. Default 60.",
    )
    group.add_argument(
        "--step-start",
        type=int,
        default=0,
        help="Step shape: users of the first step. Default: --step-users.",
    )
    group.add_argument(
        "--step-max",
        type=int,
        default=0,
        help="Step shape: users of the last step. Default: -u.",
    )
    group.add_argument(
        "--step-levels",
        default="",
        help="Step shape: the user count of every step, comma-separated (e.g. 1000,1500,2250); "
        "overrides --step-start/--step-users/--step-max.",
    )
    group.add_argument(
        "--step-spawn-rate",
        type=float,
        default=0.0,
        help="Step shape: users started per second within a step. Default: the largest rise "
        "between two steps (each step ramps in about one second).",
    )
    group.add_argument(
        "--step-first-spawn-rate",
        type=float,
        default=0.0,
        help="Step shape: users started per second in the first ramp, from zero users "
        "(default: --step-spawn-rate).",
    )
    # Exporter and saturation guard
    group.add_argument(
        "--exporter-port",
        type=int,
        default=9190,
        include_in_web_ui=False,
        help="Port of the Prometheus exporter of the load generator (master or standalone "
        "process only); 0 disables. Default 9190.",
    )
    group.add_argument(
        "--exporter-host",
        default="127.0.0.1",
        include_in_web_ui=False,
        help="Address the exporter listens on. Default 127.0.0.1.",
    )
    group.add_argument(
        "--heartbeat-liveness",
        type=int,
        default=0,
        include_in_web_ui=False,
        help="Seconds without a heartbeat after which the master counts a worker as missing "
        "and moves its users to the others. Default 0: Locust's own (3 s). Many workers on "
        "few CPUs, each busy connecting thousands of users, can miss 3 s without being gone.",
    )
    group.add_argument(
        "--cpu-threshold",
        type=float,
        default=90.0,
        include_in_web_ui=False,
        help="CPU percent of one Locust process above which it counts as saturated. Default 90.",
    )
