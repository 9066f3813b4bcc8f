"""Latencies handed to Locust's statistics in batches, with the numbers Locust would have.

One ``events.request.fire`` per received message costs more than the rest of
the receive path (about 2 µs in Locust's ``RequestStats.log_request`` alone).
:class:`BatchedStats` keeps the successful samples of the high-volume names
(``ack``, ``fanout``, ``ping``) in plain lists and, once a second, merges
each completed second into Locust's ``RequestStats`` through
``StatsEntry.extend``, the method Locust's master uses to merge its workers'
reports. Every message is still one request in Locust's stats:

- request counts, the sum, min and max of response times, content length;
- the response-time table (each sample rounded by Locust's own
  ``locust.stats.bucket_response_time``, looked up at merge time, so a
  custom bucketing still applies);
- requests per second (each sample counted in the second it was received),
  the first and last request times;

so the console, the CSVs (stats and per-second history), the web UI, the
project's exporter and the worker → master reports all see the same numbers
as with one event per message, at most about a second later. What is not
there: other listeners of ``events.request`` (Locust's stats are the only
one here) do not see these successful samples one by one. Failures are never
batched: they go through ``events.request.fire`` at once.

Usage: before adding samples stamped ``now`` (``time.time()``), call
``rotate(now)`` if ``now >= stats.second_end``; then append to
``series.response_times`` and add to ``series.content_length``, setting
``series.first`` (if the list was empty) and ``series.last`` (see
:meth:`Series.add`, which does exactly that). Call :meth:`BatchedStats.flush`
regularly (:meth:`start` runs it every second in a greenlet) and with
``everything=True`` when a test stops.
"""

from __future__ import annotations

import math

import gevent
from locust import stats as locust_stats
from locust.stats import RequestStats, StatsEntry

FLUSH_INTERVAL = 1.0  # seconds


class Series:
    """The samples of one request name within the current second."""

    __slots__ = ("content_length", "first", "last", "name", "response_times")

    def __init__(self, name: str) -> None:
        self.name = name
        self.response_times: list[float] = []  # milliseconds, in arrival order
        self.content_length = 0
        self.first = 0.0  # time.time() of the first and last sample
        self.last = 0.0

    def add(self, response_time: float, content_length: int, now: float) -> None:
        """Record one sample (the receive path inlines these four lines)."""
        if not self.response_times:
            self.first = now
        self.response_times.append(response_time)
        self.content_length += content_length
        self.last = now


class BatchedStats:
    """Per-process buffer of successful samples for Locust's ``RequestStats``.

    ``stats`` is the environment's ``RequestStats`` (``environment.stats``);
    ``request_type`` the request type every sample is logged under.
    """

    def __init__(self, stats: RequestStats, request_type: str) -> None:
        self.stats = stats
        self.request_type = request_type
        self.series: dict[str, Series] = {}
        self.second_end = 0.0  # the current second ends here (time.time())
        self._second = 0
        self._done: list[tuple[int, str, list[float], int, float, float]] = []
        self._greenlet: gevent.Greenlet | None = None

    def get(self, name: str) -> Series:
        """The series of ``name`` (created on first use, kept for the process's life)."""
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = Series(name)
        return series

    def rotate(self, now: float) -> None:
        """Close the current second if ``now`` is past it; samples after this count in
        ``now``'s second."""
        second = math.floor(now)
        if second == self._second:
            return
        self._close_second()
        self._second = second
        self.second_end = second + 1.0

    def _close_second(self) -> None:
        for series in self.series.values():
            if series.response_times:
                self._done.append(
                    (
                        self._second,
                        series.name,
                        series.response_times,
                        series.content_length,
                        series.first,
                        series.last,
                    )
                )
                series.response_times = []
                series.content_length = 0

    def flush(self, now: float, everything: bool = False) -> int:
        """Merge every completed second (and the current one if ``everything``) into
        Locust's stats; return the number of samples merged."""
        self.rotate(now)
        if everything:
            self._close_second()
        done, self._done = self._done, []
        merged = 0
        for second, name, response_times, content_length, first, last in done:
            batch = self._entry(name, second, response_times, content_length, first, last)
            self.stats.total.extend(batch)
            self.stats.entries[(name, self.request_type)].extend(batch)
            merged += len(response_times)
        return merged

    def discard(self) -> None:
        """Drop the buffered samples (Locust's stats were reset)."""
        self._done = []
        for series in self.series.values():
            series.response_times = []
            series.content_length = 0

    def _entry(
        self,
        name: str,
        second: int,
        response_times: list[float],
        content_length: int,
        first: float,
        last: float,
    ) -> StatsEntry:
        """A StatsEntry holding exactly what ``StatsEntry.log`` would have recorded."""
        entry = StatsEntry(self.stats, name, self.request_type, use_response_times_cache=False)
        bucket = locust_stats.bucket_response_time
        table = entry.response_times
        total = 0
        for response_time in response_times:
            total += response_time
            table[bucket(response_time)] += 1
        entry.num_requests = len(response_times)
        entry.total_response_time = total
        entry.min_response_time = min(response_times)
        entry.max_response_time = max(response_times)
        entry.total_content_length = content_length
        entry.num_reqs_per_sec[second] = len(response_times)
        entry.start_time = first
        entry.last_request_timestamp = last
        return entry

    # -- the flushing greenlet --------------------------------------------------------

    def start(self, clock) -> None:
        """Flush every second in a greenlet (``clock`` is ``time.time``)."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run, clock)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self, clock) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL)
            self.flush(clock())
