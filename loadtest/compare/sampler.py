"""One sample per second of the server (its /metrics) and of the load generator.

A sample is a plain dict (one JSON line in ``<server>-samples.jsonl``):

- ``t``: wall-clock time of the sample; ``server_t``: when the server's scrape
  returned (server rates use it: a busy server answers its scrape late);
- ``server``: the server's /metrics reduced to what the report uses (``None``
  when it did not answer): gauges, counters by reason, and the cumulative
  buckets of ``chat_fanout_seconds`` and ``chat_event_loop_lag_seconds``;
- ``locust``: Locust's exporter (users, requests and failures by name, the
  response-time buckets of the scenario latency and their sum, its own CPU gauge);
- ``locust_cpu``: CPU % of the Locust process tree, measured here with psutil
  (one core = 100), so saturation is seen even without the exporter;
  ``locust_cpu_busiest``: CPU % of its busiest process (with ``--processes``
  each process is one core's worth at most);
- ``machine_cpu``: CPU % of the whole machine (all cores = 100);
- ``locust_rss``: resident memory of the Locust process tree, bytes;
- ``machine_memory_used``: memory in use on the machine (total - available), bytes;
- ``sockstat``: the kernel's TCP socket counts (``/proc/net/sockstat``: ``inuse``,
  ``orphan``, ``tw``, ``alloc``) and ``mem_bytes``, the memory of all TCP socket
  buffers (its ``mem``, in pages).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import psutil

from loadtest import prom

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
        "latency_sum": flat.get(f"locust_response_time_seconds_sum{{name={latency_name}}}"),
        "cpu_percent": flat.get("locust_cpu_percent"),
        "saturated": flat.get("locust_cpu_saturated"),
    }


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and its descendants (the workers of a ``--workers`` server,
    Locust's ``--processes``); none once it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class ProcessCpu:
    """CPU % of a process and of each of its children between two calls (one core = 100)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last: tuple[float, dict[int, float]] | None = None

    def _cpu_seconds(self) -> dict[int, float] | None:
        out = {}
        for proc in process_tree(self.pid):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out[proc.pid] = times.user + times.system
        return out or None

    def rss(self) -> int | None:
        """Resident memory of the process and its children, bytes."""
        total = None
        for proc in process_tree(self.pid):
            with contextlib.suppress(psutil.Error):
                total = (total or 0) + proc.memory_info().rss
        return total

    def percents(self) -> dict[int, float] | None:
        """CPU % of each process of the tree since the last call (None on the first)."""
        now, seconds = time.monotonic(), self._cpu_seconds()
        if seconds is None:
            return None
        last, self._last = self._last, (now, seconds)
        if last is None or now <= last[0]:
            return None
        elapsed = now - last[0]
        return {
            pid: 100.0 * max(0.0, used - last[1].get(pid, used)) / elapsed
            for pid, used in seconds.items()
        }


class Sampler:
    """Takes one sample of a server and its load generator on each :meth:`sample` call."""

    def __init__(
        self,
        metrics_urls: list[str],
        exporter_url: str,
        latency_name: str,
        scrape_timeout: float = 2.0,
    ) -> None:
        """``metrics_urls``: one per server process (several with ``--workers``), summed.
        A server scrape that gets no answer within ``scrape_timeout`` s makes the sample's
        ``server`` None: the server was silent that long (``steps.silence``)."""
        self.metrics_urls = metrics_urls
        self.scrape_timeout = scrape_timeout
        self.exporter_url = exporter_url
        self.latency_name = latency_name
        self.locust_cpu: ProcessCpu | None = None
        psutil.cpu_percent(None)

    def watch_locust(self, pid: int) -> None:
        self.locust_cpu = ProcessCpu(pid)
        self.locust_cpu.percents()

    def sample(self) -> dict:
        t = time.time()
        server = server_view(prom.scrape_all(self.metrics_urls, self.scrape_timeout))
        server_t = time.time()  # a busy server answers late: its rates use this time
        locust = locust_view(prom.scrape(self.exporter_url), self.latency_name)
        per_process = self.locust_cpu.percents() if self.locust_cpu else None
        return {
            "t": t,
            "server_t": server_t,
            "server": server,
            "locust": locust,
            # all Locust processes together, and the busiest one (what saturates first)
            "locust_cpu": sum(per_process.values()) if per_process else None,
            "locust_cpu_busiest": max(per_process.values()) if per_process else None,
            "machine_cpu": psutil.cpu_percent(None),
            "locust_rss": self.locust_cpu.rss() if self.locust_cpu else None,
            "machine_memory_used": _memory_used(),
            "sockstat": sockstat(),
        }


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def sockstat(path: Path = Path("/proc/net/sockstat")) -> dict | None:
    """The kernel's TCP socket counts and TCP buffer memory (bytes), or None off Linux."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            values = {k: int(v) for k, v in zip(fields[::2], fields[1::2], strict=False)}
            out = {k: values.get(k) for k in ("inuse", "orphan", "tw", "alloc")}
            out["mem_bytes"] = values["mem"] * PAGE if "mem" in values else None
            return out
    return None


def _memory_used() -> int:
    memory = psutil.virtual_memory()
    return memory.total - memory.available
