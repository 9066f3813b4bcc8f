"""Connections at scale (the c100k profile): per-step costs, the walls, the machine's limits.

Each step of a spread run (several server and Locust processes) is reduced
to what holding idle connections costs: the server's memory summed over its
processes, and per connection; its threads and fds; the kernel's TCP sockets
and their buffer memory (``/proc/net/sockstat``, machine-wide, so both ends of
every loopback connection); the ping p99; handshakes per second in the ramp;
CPU at rest (the judged window, after the ramp); Locust's memory per user.
"""

from __future__ import annotations

import html

from loadtest.compare import figures, walls

LIMIT_KEYS = (
    ("pid_max", "kernel.pid_max (task ids: every thread takes one)"),
    ("threads_max", "kernel.threads-max"),
    ("max_map_count", "vm.max_map_count (mappings per process: a thread stack is 2)"),
    ("fd_limit", "open files per process (soft, hard)"),
    ("ephemeral_ports", "ephemeral ports (net.ipv4.ip_local_port_range)"),
    ("somaxconn", "net.core.somaxconn"),
    ("tcp_tw_reuse", "net.ipv4.tcp_tw_reuse"),
    ("tasks_at_start", "tasks on the machine when the run started"),
    ("memory_bytes", "RAM"),
)


def step_rows(run: dict) -> list[dict]:
    """One row per step: what each connection and user cost there."""
    base_rss = (run.get("baseline") or {}).get("rss") or 0
    locust_base = run.get("locust_rss_at_start") or 0
    out = []
    for r in run["steps"]:
        conns, users = r.connections or 0, r.users or 0
        rss, locust = r.rss_bytes, r.locust_rss_bytes
        out.append({
            "phase": r.phase or "",
            "users": r.users_target,
            "connections": r.connections,
            "rss_mib": _div(rss, 2**20),
            "kib_per_connection": _div((rss or 0) - base_rss, 1024 * conns) if rss else None,
            "threads": r.threads,
            "fds": r.open_fds,
            "tcp_sockets": r.tcp_sockets,
            "tcp_mem_mib": _div(r.tcp_mem_bytes, 2**20),
            "p99_ms": figures.p99(r),
            "handshakes_per_s": r.handshakes_per_s_peak,
            "cpu_at_rest": r.server_cpu_cores,
            "locust_mib": _div(locust, 2**20),
            "locust_kib_per_user": (
                _div(locust - locust_base, 1024 * users) if locust and users else None
            ),
            "outcome": r.outcome + (f": {r.reason}" if r.reason else ""),
        })  # fmt: skip
    return out


COLUMNS = (
    ("phase", "phase", "{}"),
    ("users", "users", "{:,}"),
    ("connections", "conns", "{:,.0f}"),
    ("rss_mib", "server RSS MiB (sum)", "{:,.0f}"),
    ("kib_per_connection", "KiB / conn", "{:.1f}"),
    ("threads", "threads", "{:,.0f}"),
    ("fds", "fds", "{:,.0f}"),
    ("tcp_sockets", "TCP sockets (machine)", "{:,}"),
    ("tcp_mem_mib", "TCP buffers MiB", "{:,.1f}"),
    ("p99_ms", "ping p99 ms", "{:,.0f}"),
    ("handshakes_per_s", "handshakes/s (peak 3 s)", "{:,.0f}"),
    ("cpu_at_rest", "server CPU at rest (cores)", "{:.2f}"),
    ("locust_mib", "Locust RSS MiB", "{:,.0f}"),
    ("locust_kib_per_user", "Locust KiB / user", "{:.1f}"),
    ("outcome", "outcome", "{}"),
)  # fmt: skip


def markdown(runs: dict) -> str:
    """Every server's step rows as one Markdown table."""
    lines = [
        "| server | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for kind, run in runs.items():
        for row in step_rows(run):
            cells = [_fmt(row[k], f) for k, _, f in COLUMNS]
            lines.append(f"| {kind} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def html_section(summary: dict) -> str:
    """The report's section: the walls in words, every step's costs, the limits in force."""
    runs, machine = summary["servers"], summary["machine"]
    parts = ["<h2>Connections: where each model's wall stands</h2>"]
    sentences = [s for s in (walls.describe(run, machine) for run in runs.values()) if s]
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>")
    for kind, run in runs.items():
        parts.append(
            f"<h3>{html.escape(kind)}: {run.get('workers', 1)} server processes</h3><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
            + "</tr>"
        )
        for row in step_rows(run):
            parts.append(
                "<tr>" + "".join(f"<td>{html.escape(_fmt(row[k], f))}</td>" for k, _, f in COLUMNS)
                + "</tr>"
            )  # fmt: skip
        parts.append("</table>")
        for line in (run.get("wall") or {}).get("first_warnings") or []:
            parts.append(f"<pre class='small'>{html.escape(line)}</pre>")
    parts.append(
        "<p class='small'>KiB / conn: (server RSS − RSS at start) / connections, summed over "
        "its processes. TCP sockets and buffers are the whole machine's (both ends of every "
        "loopback connection). CPU at rest: the server's CPU over the judged window, after "
        "the ramp. Locust KiB / user: (Locust RSS − RSS when the first user started) / users, "
        "all its processes.</p>"
    )
    parts.append("<h3>Limits in force (recorded, never changed by the run)</h3>")
    parts.append(
        "<table>"
        + "".join(
            f"<tr><td>{html.escape(label)}</td><td>{html.escape(str(machine.get(key)))}</td></tr>"
            for key, label in LIMIT_KEYS
        )
        + "</table>"
    )
    return "\n".join(parts)


def _div(value: float | None, by: float) -> float | None:
    return None if value is None or not by else value / by


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)
