"""Build monitoring/grafana/dashboards/twinchat.json, the twinchat Grafana dashboard.

The dashboard is written as data here rather than edited by hand, so that every
panel uses the same datasource, selectors and rate window, and panel ids and
positions cannot collide. Run it after changing a panel:

    .venv/bin/python monitoring/dashboard.py          # rewrite the JSON
    .venv/bin/python monitoring/dashboard.py --check  # exit 1 if the JSON is stale

(tests/test_monitoring.py runs the check, then evaluates every query of the
JSON against a real Prometheus.) Only the standard library is used.

Conventions of every query:
- servers are selected with SERVER (``job=~"$job", instance=~"$instance"``) and
  summed ``by (job)``, so several instances of one server (e.g. async workers on
  metrics ports 9102, 9104, ...) show as one line per server;
- the load generator is selected with LOADGEN (``job=~"$loadgen"``) and split
  ``by (instance)``: one line per Locust (master) process, so two runs driving
  the two servers at once are not blended into one percentile;
- rates use ``[$window]`` (default 30s: 15 samples at the 2s scrape interval).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "twinchat.json"

DATASOURCE = {"type": "prometheus", "uid": "twinchat-prometheus"}
SERVER = 'job=~"$job", instance=~"$instance"'
LOADGEN = 'job=~"$loadgen"'
W = "[$window]"
LG_BY = "instance, name"
LG = "locust {{instance}} "  # legend prefix of load-generator series


def rate(metric: str, sel: str = SERVER, by: str = "job") -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}{W}))"


def quantile(q: float, histogram: str, sel: str = SERVER, by: str = "job") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{{{sel}}}{W})))"


def target(expr: str, legend: str, **extra) -> dict:
    return {"expr": expr, "legendFormat": legend, **extra}


class Layout:
    """Assigns ids and grid positions: panels flow left to right in 24 columns."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        if self.x:
            self._newline()
        self.panels.append(
            {
                "id": self._id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        targets = panel.pop("targets")
        panel = {
            "id": self._id(),
            **panel,
            "datasource": DATASOURCE,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "range": True, **t}
                for i, t in enumerate(targets)
            ],
        }
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def timeseries(
    title: str,
    description: str,
    targets: list[dict],
    unit: str = "short",
    *,
    repeat: bool = False,
    stack: bool = False,
    max_line: float | None = None,
    minimum: float | None = 0,
) -> dict:
    """A time-series panel; ``repeat`` makes one copy per selected server, side by side."""
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10 if stack else 0,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisSoftMin": minimum,
        "thresholdsStyle": {"mode": "line+area" if max_line is not None else "off"},
    }
    steps = [{"color": "transparent", "value": None}]
    if max_line is not None:
        steps.append({"color": "red", "value": max_line})
    panel = {
        "type": "timeseries",
        "title": title,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": custom,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }
    if repeat:
        panel.update(repeat="job", repeatDirection="h", maxPerRow=2)
    return panel


def stat(
    title: str, description: str, targets: list[dict], unit: str = "short", text_mode="auto"
) -> dict:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": [{"color": "blue", "value": None}]},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
            "colorMode": "none",
            "graphMode": "area" if text_mode == "auto" else "none",
            "justifyMode": "auto",
            "orientation": "auto",
        },
        "targets": targets,
    }


def query_variable(name: str, label: str, query: str, all_value: str | None) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def window_variable() -> dict:
    choices = ["10s", "30s", "1m", "5m"]
    return {
        "name": "window",
        "label": "Rate window",
        "type": "custom",
        "query": ",".join(choices),
        "multi": False,
        "includeAll": False,
        "current": {"selected": True, "text": "30s", "value": "30s"},
        "options": [{"selected": c == "30s", "text": c, "value": c} for c in choices],
        "hide": 0,
    }


def panels() -> list[dict]:
    lay = Layout()
    per_job = "{{job}}"

    lay.row("Overview (one value per server; the load generator on the right)")
    lay.add(
        stat(
            "Running servers",
            "One line per server process scraped: implementation, event loop, Python. "
            "Missing here means Prometheus cannot scrape it (see Status > Targets).",
            [
                target(
                    f"max by (job, instance, implementation, loop, python) "
                    f"(chat_server_info{{{SERVER}}})",
                    "{{job}} {{instance}}: {{implementation}} / {{loop}} / Python {{python}}",
                )
            ],
            text_mode="name",
        ),
        w=8,
        h=5,
    )
    lay.add(
        stat(
            "Connected clients",
            "Open WebSocket connections, summed over the instances of each server.",
            [target(f"sum by (job) (chat_connections{{{SERVER}}})", per_job)],
        ),
        w=4,
        h=5,
    )
    lay.add(
        stat(
            "Messages in /s",
            "Client frames received per second (every type: hello, join, say, ping...).",
            [target(rate("chat_messages_received_total"), per_job)],
            unit="reqps",
        ),
        w=4,
        h=5,
    )
    lay.add(
        stat(
            "Deliveries out /s",
            "Chat messages handed to room members per second (one say to a room of N "
            "members is N deliveries).",
            [target(rate("chat_messages_delivered_total"), per_job)],
            unit="reqps",
        ),
        w=4,
        h=5,
    )
    lay.add(
        stat(
            "Locust users",
            "Users the load generator is running right now.",
            [target(f"sum(locust_users{{{LOADGEN}}})", "users")],
        ),
        w=4,
        h=5,
    )
    lay.add(
        stat(
            "Fan-out p95",
            "95th percentile of say received -> handed to the last member, per server.",
            [target(quantile(0.95, "chat_fanout_seconds"), per_job)],
            unit="s",
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "CPU (100% = one core)",
            "Process CPU per server. An asyncio server cannot use more than one core per "
            "process; a threaded one cannot either while the GIL serialises its threads.",
            [target(rate("process_cpu_seconds_total"), per_job)],
            unit="percentunit",
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "Resident memory",
            "RSS per server, summed over instances.",
            [target(f"sum by (job) (process_resident_memory_bytes{{{SERVER}}})", per_job)],
            unit="bytes",
        ),
        w=6,
        h=4,
    )
    lay.add(
        stat(
            "File descriptors used",
            "Highest open-fds / fd-limit ratio among each server's instances; at 100% new "
            "connections fail with EMFILE.",
            [
                target(
                    f"max by (job) (process_open_fds{{{SERVER}}} / process_max_fds{{{SERVER}}})",
                    per_job,
                )
            ],
            unit="percentunit",
        ),
        w=6,
        h=4,
    )

    lay.row("Load and throughput")
    lay.add(
        timeseries(
            "Connected clients vs Locust users",
            "Connections each server holds, with the users Locust runs on the same axis. "
            "A server line falling below the users line means clients are being refused "
            "or dropped.",
            [
                target(f"sum by (job) (chat_connections{{{SERVER}}})", per_job),
                target(f"sum by (instance) (locust_users{{{LOADGEN}}})", LG + "users"),
            ],
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Messages in and deliveries out per second",
            "Frames received from clients (in) and messages handed to members (out). "
            "out/in is the fan-out factor; out flattening while in keeps rising is a "
            "server at its limit.",
            [
                target(rate("chat_messages_received_total"), "{{job}} in"),
                target(rate("chat_messages_delivered_total"), "{{job}} out"),
            ],
            unit="reqps",
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Connections opened and rejected per second",
            "Accepted connections per second, and refusals by reason (capacity: "
            "--max-connections reached; overload; handshake: bad upgrade request).",
            [
                target(rate("chat_connections_opened_total"), "{{job}} opened"),
                target(
                    rate("chat_connections_rejected_total", by="job, reason"),
                    "{{job}} rejected: {{reason}}",
                ),
            ],
            unit="reqps",
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Rooms",
            "Rooms with at least one member.",
            [target(f"sum by (job) (chat_rooms{{{SERVER}}})", per_job)],
        ),
        w=12,
        h=8,
    )

    lay.row("Fan-out latency (say received -> handed to the last member)")
    lay.add(
        timeseries(
            "Fan-out latency: $job",
            "p50/p95/p99 from the chat_fanout_seconds histogram, one panel per server. "
            "Handed over means written to the socket (threaded) or to the transport "
            "buffer (async), not read by the client: compare with Locust's fanout time.",
            [
                target(quantile(0.5, "chat_fanout_seconds"), "{{job}} p50"),
                target(quantile(0.95, "chat_fanout_seconds"), "{{job}} p95"),
                target(quantile(0.99, "chat_fanout_seconds"), "{{job}} p99"),
            ],
            unit="s",
            repeat=True,
        ),
        w=24,
        h=8,
    )
    lay.add(
        timeseries(
            "Fan-out p99, servers compared",
            "The two servers' p99 on one axis.",
            [target(quantile(0.99, "chat_fanout_seconds"), "{{job}} p99")],
            unit="s",
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Server CPU per delivery",
            "CPU seconds spent per delivered message: the cost of one delivery. Rising "
            "under constant traffic means overhead (context switches, lock contention, "
            "slow consumers) is eating the CPU.",
            [
                target(
                    f"{rate('process_cpu_seconds_total')} / "
                    f"({rate('chat_messages_delivered_total')} > 0)",
                    per_job,
                )
            ],
            unit="s",
        ),
        w=12,
        h=8,
    )

    lay.row("Resources")
    lay.add(
        timeseries(
            "CPU (100% = one core)",
            "rate(process_cpu_seconds_total). Flat at 100% while load rises: the server is "
            "bound to one core (the GIL for threads, the single event loop for asyncio).",
            [target(rate("process_cpu_seconds_total"), per_job)],
            unit="percentunit",
            max_line=1.0,
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Event-loop lag (async only)",
            "How late the event loop runs a timer it scheduled. Growing lag means "
            "callbacks (or blocking code) hold the loop; every client waits that long. "
            "The threaded server has no event loop and shows no line here.",
            [
                target(quantile(0.5, "chat_event_loop_lag_seconds"), "{{job}} p50"),
                target(quantile(0.99, "chat_event_loop_lag_seconds"), "{{job}} p99"),
            ],
            unit="s",
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Garbage-collector pauses",
            "Share of time CPython's cyclic collector held the GIL, by generation: every "
            "thread of the process, the event loop and /metrics included, waits meanwhile. A "
            "full (generation 2) collection walks every live object, so its pauses grow with "
            "the connections a process holds (0.6-0.8 s at 18,000 per process here); they come "
            "while connections grow, rarely at rest. chat_gc_pause_seconds has each pause.",
            [
                target(
                    rate("chat_gc_pause_seconds_sum", by="job, generation"),
                    "{{job}} gen {{generation}}",
                )
            ],
            unit="percentunit",
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Resident memory",
            "RSS per server, summed over instances.",
            [target(f"sum by (job) (process_resident_memory_bytes{{{SERVER}}})", per_job)],
            unit="bytes",
        ),
        w=8,
        h=8,
    )
    lay.add(
        timeseries(
            "Memory per connection",
            "RSS divided by connections, and RSS above the lowest RSS of the last hour "
            "(about the idle server) divided by connections: the marginal cost of one "
            "client. With few clients the first is mostly the interpreter.",
            [
                target(
                    f"sum by (job) (process_resident_memory_bytes{{{SERVER}}}) / "
                    f"(sum by (job) (chat_connections{{{SERVER}}}) > 0)",
                    "{{job}} RSS / connection",
                ),
                target(
                    f"(sum by (job) (process_resident_memory_bytes{{{SERVER}}}) - "
                    f"sum by (job) (min_over_time(process_resident_memory_bytes{{{SERVER}}}[1h])))"
                    f" / (sum by (job) (chat_connections{{{SERVER}}}) > 0)",
                    "{{job}} growth / connection",
                ),
            ],
            unit="bytes",
        ),
        w=8,
        h=8,
    )
    lay.add(
        timeseries(
            "Virtual memory",
            "Address space reserved. Each thread reserves a stack (--thread-stack-kib, 256 KiB "
            "by default), so a thread-per-connection server grows here before its RSS does.",
            [target(f"sum by (job) (process_virtual_memory_bytes{{{SERVER}}})", per_job)],
            unit="bytes",
        ),
        w=8,
        h=8,
    )
    lay.add(
        timeseries(
            "OS threads",
            "Threads of each server process. Thread-per-connection: grows one for one with "
            "connections; asyncio: flat.",
            [target(f"sum by (job) (chat_threads{{{SERVER}}})", per_job)],
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Open file descriptors",
            "One per connection plus the listening sockets and files; the per-process limit "
            "is process_max_fds (see the overview).",
            [target(f"sum by (job) (process_open_fds{{{SERVER}}})", per_job)],
        ),
        w=12,
        h=8,
    )

    lay.row("Disconnects, drops and refusals")
    lay.add(
        timeseries(
            "Disconnects by reason: $job",
            "Connections ended per second, by reason: client_close (normal), error, "
            "slow_consumer (could not keep up with its room), rate_limit (flooding), "
            "timeout (missed pings), shutdown.",
            [
                target(
                    rate("chat_disconnects_total", by="job, reason"),
                    "{{job}} {{reason}}",
                )
            ],
            unit="reqps",
            repeat=True,
            stack=True,
        ),
        w=24,
        h=8,
    )
    lay.add(
        timeseries(
            "Dropped messages by reason: $job",
            "Client messages refused (rate_limited, invalid) and deliveries skipped for "
            "clients that cannot keep up (slow_consumer).",
            [
                target(
                    rate("chat_messages_dropped_total", by="job, reason"),
                    "{{job}} {{reason}}",
                )
            ],
            unit="reqps",
            repeat=True,
            stack=True,
        ),
        w=24,
        h=8,
    )

    lay.row("Load generator (Locust)")
    lay.add(
        timeseries(
            "Locust users",
            "Users running, on the same time axis as everything above.",
            [target(f"sum by (instance) (locust_users{{{LOADGEN}}})", LG + "users")],
        ),
        w=8,
        h=8,
    )
    lay.add(
        timeseries(
            "Locust requests and failures per second",
            "Operations Locust measured per second, by name, and failures by name.",
            [
                target(rate("locust_requests_total", LOADGEN, by=LG_BY), LG + "{{name}}"),
                target(
                    rate("locust_failures_total", LOADGEN, by=LG_BY),
                    LG + "{{name}} failures",
                ),
            ],
            unit="reqps",
        ),
        w=16,
        h=8,
    )
    lay.add(
        timeseries(
            "Locust response times",
            "p50 and p95 of what Locust measured, by name: connect (handshake), join, ack "
            "(say -> own copy back), fanout (sent_at -> received by another member). "
            "Only trustworthy while the load generator is not saturated.",
            [
                target(
                    quantile(0.5, "locust_response_time_seconds", LOADGEN, by=LG_BY),
                    LG + "{{name}} p50",
                ),
                target(
                    quantile(0.95, "locust_response_time_seconds", LOADGEN, by=LG_BY),
                    LG + "{{name}} p95",
                ),
            ],
            unit="s",
        ),
        w=12,
        h=8,
    )
    lay.add(
        timeseries(
            "Load-generator CPU and saturation",
            "Locust's own CPU (its measure, and rate(process_cpu_seconds_total) of the "
            "process). Above the red line (90%) Locust is saturated: its latencies then "
            "measure Locust, not the server; the saturated line is 1 while that lasts.",
            [
                target(f"max by (instance) (locust_cpu_percent{{{LOADGEN}}}) / 100", LG + "CPU"),
                target(
                    rate("process_cpu_seconds_total", LOADGEN, by="instance"), LG + "process CPU"
                ),
                target(
                    f"max by (instance) (locust_cpu_saturated{{{LOADGEN}}})",
                    LG + "saturated (0/1)",
                ),
                target(
                    f"sum by (instance) "
                    f"(increase(locust_cpu_saturation_warnings_total{{{LOADGEN}}}{W}))",
                    LG + "saturation warnings in window",
                ),
            ],
            unit="percentunit",
            max_line=0.9,
        ),
        w=12,
        h=8,
    )
    return lay.panels


def dashboard() -> dict:
    return {
        "uid": "twinchat",
        "title": "twinchat: threaded vs async under load",
        "description": "Both twinchat servers side by side with the Locust load on the same "
        "time axis. Built by monitoring/dashboard.py; walk-through in docs/monitoring.md.",
        "tags": ["twinchat", "websocket", "locust"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {"refresh_intervals": ["2s", "5s", "10s", "30s", "1m"]},
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                # "All" of job and loadgen means the values found, never ".*": the
                # process_* metrics exist in every job, servers and Locust alike.
                query_variable("job", "Server", "label_values(chat_server_info, job)", None),
                # Instances are always narrowed by $job, so ".*" is safe (and short).
                query_variable(
                    "instance",
                    "Instance",
                    'label_values(chat_server_info{job=~"$job"}, instance)',
                    ".*",
                ),
                query_variable(
                    "loadgen", "Load generator", "label_values(locust_users, job)", None
                ),
                window_variable(),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python monitoring/dashboard.py", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
