"""One sample per second of the server (its /metrics) and of the load generator.

A sample is a plain dict (one JSON line in ``<server>-samples.jsonl``):

- ``t``: wall-clock time of the sample; ``server_t``: when the server's scrape
  returned (server rates use it: a busy server answers its scrape late);
- ``server``: the server's /metrics reduced to what the report uses (``None``
  when it did not answer): gauges, counters by reason, and the cumulative
  buckets of ``chat_fanout_seconds`` and ``chat_event_loop_lag_seconds``;
- ``locust``: Locust's exporter (users, requests and failures by name, the
  response-time buckets of the scenario latency, its own CPU gauge);
- ``locust_cpu``: CPU % of the Locust process tree, measured here with psutil
  (one core = 100), so saturation is seen even without the exporter;
- ``machine_cpu``: CPU % of the whole machine (all cores = 100).
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from loadtest.compare import prom

REASONS = {
    "rejected": ("chat_connections_rejected_total", "reason"),
    "disconnects": ("chat_disconnects_total", "reason"),
    "dropped": ("chat_messages_dropped_total", "reason"),
}
GAUGES = {
    "connections": "chat_connections",
    "opened": "chat_connections_opened_total",
    "rss": "process_resident_memory_bytes",
    "vms": "process_virtual_memory_bytes",
    "fds": "process_open_fds",
    "threads": "chat_threads",
    "cpu_seconds": "process_cpu_seconds_total",
    "received": "chat_messages_received_total",
    "delivered": "chat_messages_delivered_total",
    "rooms": "chat_rooms",
}


def server_view(flat: dict | None) -> dict | None:
    """The part of a server scrape the report needs."""
    if flat is None:
        return None
    view = {key: flat.get(name) for key, name in GAUGES.items()}
    for key, (name, label) in REASONS.items():
        prefix = f"{name}{{{label}="
        view[key] = {k[len(prefix) : -1]: v for k, v in flat.items() if k.startswith(prefix)}
    view["fanout"] = flat.get("hist:chat_fanout_seconds")
    view["loop_lag"] = flat.get("hist:chat_event_loop_lag_seconds")
    return view


def locust_view(flat: dict | None, latency_name: str) -> dict | None:
    """The part of a scrape of Locust's exporter the report needs."""
    if flat is None:
        return None

    def by_name(metric: str) -> dict[str, float]:
        prefix = f"{metric}{{name="
        return {k[len(prefix) : -1]: v for k, v in flat.items() if k.startswith(prefix)}

    return {
        "users": flat.get("locust_users"),
        "requests": by_name("locust_requests_total"),
        "failures": by_name("locust_failures_total"),
        "latency": flat.get(f"hist:locust_response_time_seconds{{name={latency_name}}}"),
        "cpu_percent": flat.get("locust_cpu_percent"),
        "saturated": flat.get("locust_cpu_saturated"),
    }


class ProcessCpu:
    """CPU % of a process and its children between two calls (one core = 100)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last: tuple[float, float] | None = None

    def _cpu_seconds(self) -> float | None:
        try:
            root = psutil.Process(self.pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return None

    def percent(self) -> float | None:
        now, seconds = time.monotonic(), self._cpu_seconds()
        if seconds is None:
            return None
        last, self._last = self._last, (now, seconds)
        if last is None or now <= last[0]:
            return None
        return 100.0 * (seconds - last[1]) / (now - last[0])


class Sampler:
    """Takes one sample of a server and its load generator on each :meth:`sample` call."""

    def __init__(self, metrics_urls: list[str], exporter_url: str, latency_name: str) -> None:
        """``metrics_urls``: one per server process (several with ``--workers``), summed."""
        self.metrics_urls = metrics_urls
        self.exporter_url = exporter_url
        self.latency_name = latency_name
        self.locust_cpu: ProcessCpu | None = None
        psutil.cpu_percent(None)

    def watch_locust(self, pid: int) -> None:
        self.locust_cpu = ProcessCpu(pid)
        self.locust_cpu.percent()

    def sample(self) -> dict:
        t = time.time()
        server = server_view(prom.scrape_all(self.metrics_urls))
        server_t = time.time()  # a busy server answers late: its rates use this time
        locust = locust_view(prom.scrape(self.exporter_url), self.latency_name)
        return {
            "t": t,
            "server_t": server_t,
            "server": server,
            "locust": locust,
            "locust_cpu": self.locust_cpu.percent() if self.locust_cpu else None,
            "machine_cpu": psutil.cpu_percent(None),
        }


def thread_times(pid: int) -> dict[int, float] | None:
    """CPU seconds of each thread of a process, by thread id.

    Read from ``/proc/PID/task/TID/schedstat`` (nanoseconds on the CPU, exact),
    not from the tick-sampled ``stat`` times, which charge thousands of briefly
    running threads nothing at all. Read once per step, not every second.
    """
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return None
    out: dict[int, float] = {}
    for task in tasks.iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return out or None


def busiest_thread(later: dict[int, float] | None, earlier: dict[int, float] | None) -> dict:
    """Between two :func:`thread_times`: CPU seconds used and the busiest thread's share."""
    if not later:
        return {"cpu_seconds": None, "busiest_share": None}
    before = earlier or {}
    used = [max(0.0, seconds - before.get(tid, 0.0)) for tid, seconds in later.items()]
    total = sum(used)
    return {
        "cpu_seconds": total,
        "busiest_share": max(used) / total if total > 0 else None,
    }
