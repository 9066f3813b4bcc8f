"""Prometheus exporter and CPU saturation guard for the Locust load generator.

An event-hook plugin, no extra service: :func:`install` hooks Locust's events.

Exporter. Only the master (or a standalone Locust) serves ``/metrics``, on
``--exporter-port`` (default 9190; 0 disables), from the default registry so
``process_*`` metrics of that process come along. Workers never open a port
(no collisions with ``--processes N``): the master's stats already aggregate the
workers' requests, and each worker sends its CPU samples to the master with its
regular report. Metrics:

- ``locust_users``: running users (all workers)
- ``locust_requests_total{name}``, ``locust_failures_total{name}``
- ``locust_response_time_seconds{name}``: histogram built from Locust's own
  response-time table when scraped (no extra cost per request; resolution is
  Locust's rounding: 1 ms below 100 ms, 10 ms below 1 s, 100 ms above)
- ``locust_cpu_percent``: CPU % of the busiest load-generator process
- ``locust_cpu_saturated``: 1 while any load-generator process is above the threshold
- ``locust_cpu_saturation_warnings_total``: saturated one-second samples, all processes

Saturation guard. Every load-generator process samples its own CPU every second
(psutil). Above ``--cpu-threshold`` (90%) it logs a warning (once), counts the
sample, and records a failure named ``cpu_saturated`` in Locust's stats, so the
CSV, the web UI and the exit code show that the latency of that period measures
the load generator, not the server.

Counters restart from 0 when Locust resets its stats (a new test in the web UI,
``--reset-stats``); Prometheus' ``rate()`` treats that as a counter reset.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import gevent
import psutil
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0
REPORT_KEY = "twinchat_cpu"
BUCKETS_SECONDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class CpuSaturated(Exception):
    """The load generator itself was above its CPU threshold during this second."""


class SaturationGuard:
    """Samples this process's CPU every second and records saturation."""

    def __init__(self, environment, threshold: float = 90.0) -> None:
        self.environment = environment
        self.threshold = threshold
        self.cpu_percent = 0.0
        self.peak_since_report = 0.0
        self.saturated = False
        self.warnings = 0
        self._warned = False
        self._greenlet: gevent.Greenlet | None = None
        # Latest report of each worker (master only): client id -> (cpu, saturated, warnings).
        self.workers: dict[str, tuple[float, bool, int]] = {}

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        process = psutil.Process()  # created here: after Locust's fork of --processes
        process.cpu_percent(None)
        while True:
            gevent.sleep(SAMPLE_INTERVAL)
            self.sample(process.cpu_percent(None))

    def sample(self, cpu: float) -> None:
        """Account for one CPU sample (percent of one core)."""
        self.cpu_percent = cpu
        self.peak_since_report = max(self.peak_since_report, cpu)
        if cpu <= self.threshold:
            self.saturated = False
            return
        self.saturated = True
        self.warnings += 1
        if not self._warned:
            self._warned = True
            logger.warning(
                "load generator CPU %.0f%% > %.0f%%: latency measured while saturated is the "
                "load generator's, not the server's (recorded as cpu_saturated failures)",
                cpu,
                self.threshold,
            )
        runner = self.environment.runner
        if runner is not None and runner.state in (STATE_SPAWNING, STATE_RUNNING):
            self.environment.events.request.fire(
                request_type="LOCUST",
                name="cpu_saturated",
                response_time=0,
                response_length=0,
                exception=CpuSaturated(
                    f"load generator CPU above {self.threshold:.0f}%: "
                    "latency of this second is not trustworthy"
                ),
            )

    # Distributed mode: workers piggyback on their stats report to the master.

    def on_report_to_master(self, client_id: str, data: dict) -> None:
        data[REPORT_KEY] = (self.peak_since_report, self.saturated, self.warnings)
        self.peak_since_report = 0.0

    def on_worker_report(self, client_id: str, data: dict) -> None:
        report = data.get(REPORT_KEY)
        if report is not None:
            cpu, saturated, warnings = report
            self.workers[client_id] = (float(cpu), bool(saturated), int(warnings))

    def totals(self) -> tuple[float, bool, int]:
        """(max CPU %, any saturated, total warnings) over this process and live workers."""
        cpu, saturated, warnings = self.cpu_percent, self.saturated, self.warnings
        runner = self.environment.runner
        live = getattr(runner, "clients", None) if isinstance(runner, MasterRunner) else None
        for client_id, (w_cpu, w_saturated, w_warnings) in self.workers.items():
            warnings += w_warnings
            if live is not None and client_id not in live:
                continue
            cpu = max(cpu, w_cpu)
            saturated = saturated or w_saturated
        return cpu, saturated, warnings


class LocustCollector:
    """Builds the ``locust_*`` metrics from Locust's stats when Prometheus scrapes."""

    def __init__(self, environment, guard: SaturationGuard | None = None) -> None:
        self.environment = environment
        self.guard = guard

    def describe(self):
        return []  # collected lazily: the runner may not exist at registration

    def collect(self):
        env = self.environment
        runner = env.runner
        users = GaugeMetricFamily("locust_users", "Running Locust users (all workers).")
        users.add_metric([], runner.user_count if runner is not None else 0)
        yield users

        requests = CounterMetricFamily(
            "locust_requests", "Requests recorded by Locust, failures included.", labels=["name"]
        )
        failures = CounterMetricFamily(
            "locust_failures", "Failures recorded by Locust.", labels=["name"]
        )
        latency = HistogramMetricFamily(
            "locust_response_time_seconds",
            "Response time by request name (Locust stats; fanout = receive time - sent_at).",
            labels=["name"],
        )
        by_name: dict[str, list] = defaultdict(list)
        stats = env.stats if env.stats is not None else (runner.stats if runner else None)
        if stats is not None:
            for entry in list(stats.entries.values()):
                by_name[entry.name].append(entry)
        for name in sorted(by_name):
            entries = by_name[name]
            requests.add_metric([name], sum(e.num_requests for e in entries))
            failures.add_metric([name], sum(e.num_failures for e in entries))
            buckets, total_ms = histogram_buckets(entries)
            latency.add_metric([name], buckets=buckets, sum_value=total_ms / 1000.0)
        yield requests
        yield failures
        yield latency

        if self.guard is not None:
            cpu, saturated, warnings = self.guard.totals()
        else:
            cpu, saturated, warnings = 0.0, False, 0
        yield GaugeMetricFamily(
            "locust_cpu_percent", "CPU % of the busiest Locust process (one core = 100).", cpu
        )
        yield GaugeMetricFamily(
            "locust_cpu_saturated",
            "1 while a Locust process is above its CPU threshold: its latency is not trustworthy.",
            1.0 if saturated else 0.0,
        )
        warn = CounterMetricFamily(
            "locust_cpu_saturation_warnings",
            "One-second CPU samples above the threshold, all Locust processes.",
        )
        warn.add_metric([], warnings)
        yield warn


def histogram_buckets(entries) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets (le in seconds) and the sum in ms from Locust StatsEntries."""
    merged: dict[int, int] = defaultdict(int)
    total_ms = 0.0
    for entry in entries:
        total_ms += entry.total_response_time
        for rounded_ms, count in entry.response_times.items():
            merged[rounded_ms] += count
    ordered = sorted(merged.items())
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    i = 0
    for le in BUCKETS_SECONDS:
        limit_ms = le * 1000.0
        while i < len(ordered) and ordered[i][0] <= limit_ms:
            cumulative += ordered[i][1]
            i += 1
        buckets.append((repr(le), cumulative))
    buckets.append(("+Inf", cumulative + sum(count for _, count in ordered[i:])))
    return buckets, total_ms


def install(environment, runner, registry=REGISTRY) -> SaturationGuard:
    """Start the guard in this process; on a master or standalone, serve the exporter."""
    options = environment.parsed_options
    threshold = getattr(options, "cpu_threshold", 90.0) or 90.0
    guard = SaturationGuard(environment, threshold)
    guard.start()
    events = environment.events
    events.quitting.add_listener(lambda **_: guard.stop())
    if isinstance(runner, WorkerRunner):
        events.report_to_master.add_listener(guard.on_report_to_master)
        return guard
    if isinstance(runner, MasterRunner):
        events.worker_report.add_listener(guard.on_worker_report)
    port = getattr(options, "exporter_port", 9190)
    if port:
        host = getattr(options, "exporter_host", "127.0.0.1")
        registry.register(LocustCollector(environment, guard))
        try:
            server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            logger.error("exporter not started on %s:%s: %s", host, port, exc)
        else:
            events.quitting.add_listener(lambda **_: server.shutdown())
            logger.info("Prometheus exporter at http://%s:%s/metrics", host, port)
    return guard
