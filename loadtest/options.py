"""Command-line options of the twinchat locustfile (added through Locust's own parser).

Defaults live here and in ``loadtest/locust.conf``; every option can also be
set in that file (``room-size = 50``) or as ``LOCUST_ROOM_SIZE=50``.
"""

from __future__ import annotations

from loadtest import scenarios

IN_WEB_UI, CLI_ONLY = True, False

# flag, type, default, help, shown in Locust's web UI
OPTIONS: tuple[tuple[str, type, object, str, bool], ...] = (
    # Rooms
    ("--room-size", int, 25, "Users per room (chat, churn, idle). Default 25.", IN_WEB_UI),
    ("--rooms", int, 4, "Number of big rooms (broadcast). Default 4.", IN_WEB_UI),
    ("--speakers", int, 1,
     "Speaking users per broadcast room and load-generator process. Default 1.", IN_WEB_UI),
    ("--room-prefix", str, "lt",
     "Prefix of room and user names (to keep concurrent runs apart). Default lt.", IN_WEB_UI),
    # Pacing
    ("--say-every", float, 5.0,
     "Seconds between two messages of one speaking user. Default 5.", IN_WEB_UI),
    ("--ping-every", float, 20.0,
     "Seconds between heartbeat pings of idle/listening users. Default 20.", IN_WEB_UI),
    ("--session-messages", int, 3, "Messages per session (churn). Default 3.", IN_WEB_UI),
    ("--churn-wait", float, 1.0,
     "Pause in seconds between two sessions of one churn user. Default 1.", IN_WEB_UI),
    ("--text-size", int, 40, "Characters per chat message. Default 40.", IN_WEB_UI),
    ("--source-address", str, "",
     "Local address the users' sockets leave from; load-generator process k (with "
     "--processes or workers) uses this address + k (127.0.0.2, 127.0.0.3, ...), so each "
     "process has its own ~28,000 ephemeral ports per server address. Default: none "
     "(the kernel chooses).", IN_WEB_UI),
    # Timeouts
    ("--ws-timeout", float, 10.0,
     "Seconds to wait for connect, welcome and joined. Default 10.", IN_WEB_UI),
    ("--close-timeout", float, 2.0,
     "Seconds to wait for the server's close frame when a user stops. Default 2.", IN_WEB_UI),
    # Step load shape
    ("--step-users", int, 0,
     "Step shape: users added per step. 0 (default) disables the step shape "
     "and -u/-r/-t apply.", IN_WEB_UI),
    ("--step-time", float, 60.0,
     "Step shape: seconds each step is held after its ramp. Default 60.", IN_WEB_UI),
    ("--step-start", int, 0,
     "Step shape: users of the first step. Default: --step-users.", IN_WEB_UI),
    ("--step-max", int, 0, "Step shape: users of the last step. Default: -u.", IN_WEB_UI),
    ("--step-levels", str, "",
     "Step shape: the user count of every step, comma-separated (e.g. 1000,1500,2250); "
     "overrides --step-start/--step-users/--step-max.", IN_WEB_UI),
    ("--step-spawn-rate", float, 0.0,
     "Step shape: users started per second within a step. Default: the largest rise "
     "between two steps (each step ramps in about one second).", IN_WEB_UI),
    ("--step-first-spawn-rate", float, 0.0,
     "Step shape: users started per second in the first ramp, from zero users "
     "(default: --step-spawn-rate).", IN_WEB_UI),
    # Exporter and saturation guard
    ("--exporter-port", int, 9190,
     "Port of the Prometheus exporter of the load generator (master or standalone "
     "process only); 0 disables. Default 9190.", CLI_ONLY),
    ("--exporter-host", str, "127.0.0.1",
     "Address the exporter listens on. Default 127.0.0.1.", CLI_ONLY),
    ("--heartbeat-liveness", int, 0,
     "Seconds without a heartbeat after which the master counts a worker as missing "
     "and moves its users to the others. Default 0: Locust's own (3 s). Many workers on "
     "few CPUs, each busy connecting thousands of users, can miss 3 s without being gone.",
     CLI_ONLY),
    ("--cpu-threshold", float, 90.0,
     "CPU percent of one Locust process above which it counts as saturated. Default 90.",
     CLI_ONLY),
)  # fmt: skip


def add_arguments(parser) -> None:
    """Register the twinchat options on Locust's argument parser (its argument groups do
    not take ``include_in_web_ui``: they go on the parser itself)."""
    parser.add_argument(
        "--scenario",
        choices=scenarios.NAMES,
        default=scenarios.DEFAULT,
        include_in_web_ui=False,
        help=f"Which user class to run: {', '.join(scenarios.NAMES)} (default "
        f"{scenarios.DEFAULT}). Ignored when User classes are named on the command line.",
    )
    for flag, kind, default, text, in_web_ui in OPTIONS:
        parser.add_argument(
            flag, type=kind, default=default, help=text, include_in_web_ui=in_web_ui
        )
