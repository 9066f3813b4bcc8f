"""Every Prometheus metric the servers export, defined once.

Both servers import these objects, so their metric names are identical. No
label carries a room, user or session name: label values come from small
fixed sets, and every combination is created at import so its series exists
from the first scrape.

The client library's default process collector adds
``process_resident_memory_bytes``, ``process_open_fds`` and
``process_cpu_seconds_total``.
"""

from __future__ import annotations

import bisect
import gc
import math
import platform
import time
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from common import codec
from common.chat import Outcome
from common.reasons import BrokerOperation, DisconnectReason, DropReason, RejectReason

# The *_created series double the exposition for no use on a dashboard.
disable_created_metrics()

# Seconds, from 100 µs to 10 s: fan-out of a small room is sub-millisecond, a
# saturated server's is seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

CONNECTIONS = Gauge("chat_connections", "WebSocket connections open now.")
CONNECTIONS_OPENED = Counter(
    "chat_connections_opened_total", "WebSocket connections accepted (handshake completed)."
)
CONNECTIONS_REJECTED = Counter(
    "chat_connections_rejected_total",
    "Connections refused: capacity (--max-connections), overload (fd limit), threads "
    "(no thread could be started), handshake (bad or timed-out handshake).",
    ["reason"],
)
DISCONNECTS = Counter("chat_disconnects_total", "Connections ended, by reason.", ["reason"])
MESSAGES_RECEIVED = Counter("chat_messages_received_total", "Text frames received from clients.")
MESSAGES_DELIVERED = Counter(
    "chat_messages_delivered_total", "Chat messages handed to members (one per member per say)."
)
MESSAGES_DROPPED = Counter(
    "chat_messages_dropped_total",
    "Client frames not acted on (rate_limited, invalid) and queued frames "
    "discarded with a slow consumer.",
    ["reason"],
)
FANOUT_SECONDS = Histogram(
    "chat_fanout_seconds",
    "From receiving a say to handing the message to its room's last member.",
    buckets=LATENCY_BUCKETS,
)
ROOMS = Gauge("chat_rooms", "Rooms with at least one member.")
THREADS = Gauge("chat_threads", "OS threads of the server process.")
SERVER_INFO = Info("chat_server", "Which server this is: implementation, loop, python.")
BROKER_ERRORS = Counter(
    "chat_broker_errors_total",
    "Operations on the shared broker (Redis) that failed; clients got 'unavailable'.",
    ["operation"],
)
BROKER_RECOVERED = Counter(
    "chat_broker_recovered_messages_total",
    "Messages whose pub/sub delivery was lost and that were fetched from history instead.",
)
EVENT_LOOP_LAG = Histogram(
    "chat_event_loop_lag_seconds",
    "How late the event loop ran a timer that was due (asyncio server only).",
    buckets=LATENCY_BUCKETS,
)


class GcPauses:
    """``chat_gc_pause_seconds``: how long each collection of CPython's cyclic garbage
    collector took, by generation. It holds the GIL throughout: every thread of the
    process, the event loop and the /metrics thread included, waits for it.

    The gc callback only adds to plain lists; the histogram is built at scrape time.
    Observing a prometheus_client metric from a gc callback can deadlock (its value
    locks are not reentrant and a collection can start while one is held:
    client_python issues 363 and 371).
    """

    name = "chat_gc_pause_seconds"

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = buckets
        self.counts = [[0] * (len(buckets) + 1) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self._started = 0.0

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = info["generation"]
        self.counts[generation][bisect.bisect_left(self.bounds, seconds)] += 1
        self.sums[generation] += seconds

    def describe(self) -> list:
        return self.collect()

    def collect(self) -> list:
        family = HistogramMetricFamily(
            self.name,
            "Time each collection of the cyclic garbage collector held the GIL (the whole "
            "process waits), by generation.",
            labels=["generation"],
        )
        for generation, counts in enumerate(self.counts):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric([str(generation)], buckets, self.sums[generation])
        return [family]


GC_PAUSES = GcPauses()
REGISTRY.register(GC_PAUSES)

for _reject in RejectReason:
    CONNECTIONS_REJECTED.labels(_reject.value)
for _disconnect in DisconnectReason:
    DISCONNECTS.labels(_disconnect.value)
for _drop in DropReason:
    MESSAGES_DROPPED.labels(_drop.value)
for _operation in BrokerOperation:
    BROKER_ERRORS.labels(_operation.value)


def os_threads() -> int:
    """Threads of this process as the kernel counts them (Linux), else 0."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


THREADS.set_function(os_threads)


def start(
    implementation: str,
    loop: str,
    *,
    host: str,
    port: int,
    connections,
    rooms,
):
    """Publish the server's identity and live gauges, and serve /metrics.

    ``connections`` and ``rooms`` are callables read at scrape time. Returns
    the HTTP server and its thread (``None`` when ``port`` is 0), so the
    caller can shut it down.
    """
    if GC_PAUSES.on_gc not in gc.callbacks:
        gc.callbacks.append(GC_PAUSES.on_gc)
    SERVER_INFO.info(
        {"implementation": implementation, "loop": loop, "python": platform.python_version()}
    )
    CONNECTIONS.set_function(connections)
    ROOMS.set_function(rooms)
    if not port:
        return None
    return start_http_server(port, addr=host)


def record(outcome: Outcome, received_at: float) -> None:
    """Count one handled client frame; ``received_at`` is its ``time.perf_counter()``."""
    MESSAGES_RECEIVED.inc()
    if outcome.dropped is not None:
        MESSAGES_DROPPED.labels(outcome.dropped.value).inc()
    if outcome.delivered:
        MESSAGES_DELIVERED.inc(outcome.delivered)
        FANOUT_SECONDS.observe(time.perf_counter() - received_at)


def delivered_from_broker(delivered: int, payload: bytes) -> None:
    """Count a message of a shared room handed to ``delivered`` local members, and its
    fan-out latency: from the say's server timestamp (``ts``) to now."""
    if not delivered:
        return
    MESSAGES_DELIVERED.inc(delivered)
    try:
        FANOUT_SECONDS.observe(max(0.0, time.time() - codec.decode(payload)["ts"]))
    except (codec.DecodeError, KeyError, TypeError):
        pass


def disconnected(reason: DisconnectReason) -> None:
    DISCONNECTS.labels(reason.value).inc()


def rejected(reason: RejectReason) -> None:
    CONNECTIONS_REJECTED.labels(reason.value).inc()


def dropped(reason: DropReason, count: int = 1) -> None:
    MESSAGES_DROPPED.labels(reason.value).inc(count)


def broker_error(operation: BrokerOperation) -> None:
    BROKER_ERRORS.labels(operation.value).inc()
