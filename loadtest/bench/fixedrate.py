"""Fixed rate: server CPU per delivery at a moderate offered load.

The fan-out scenario keeps every server saturated. There, a server's fixed
costs per wake-up (a thread switch, a lock, an ``epoll_wait``, a loop
iteration) are shared by many messages, and its throughput looks like its
reference's. A chat server spends its life far below saturation, where each
message wakes it alone and those costs are paid per message. This scenario
offers the same moderate load to every server and measures what it costs:

* one room of ``members`` connections, ``senders`` of which each send one
  message every ``1 / rate`` s on a fixed schedule (an open loop, the senders'
  phases spread evenly over the period), so the server receives
  ``senders * rate`` messages/s and delivers each to every member;
* after ``warmup`` s, for ``duration`` s: deliveries counted by the members
  (text frames received), and the server's CPU time, read from outside as the
  sum of ``/proc/<pid>/task/*/schedstat`` (exact per thread; the tick-sampled
  ``/proc/<pid>/stat`` is not, with hundreds of threads each running a few
  microseconds at a time);
* twinchat's servers also count deliveries themselves
  (``chat_messages_delivered_total``): the two counts are checked against
  each other;
* the load client's CPU, how many says it sent and how late any send was: the
  offered rate was achieved only if the client kept its schedule.

Like the fan-out, every server runs once per round and the rounds are
interleaved; a server's ratio to its bare reference is taken within each
round, and the row is the median round.
"""

from __future__ import annotations

import statistics
import subprocess
import time

from loadtest.bench.results import median_run
from loadtest.bench.scenarios import SATURATED, Runner, Sizes, sleep_until, split, stop_profiler
from loadtest.bench.servers import BARE_OF, CpuReading, Spec

DELIVERED = "chat_messages_delivered_total"
SCRAPE_LEAD = 0.2  # s between reading the server's count and the start of the CPU window


def run(runner: Runner, spec: Spec, label: str) -> dict:
    """One fixed-rate measurement of ``spec``; ``label`` names its logs (and perf file)."""
    sizes, pool = runner.sizes, runner.pool
    members, senders, rate = sizes.rate_members, sizes.rate_senders, sizes.rate_per_sender
    pool.all("close_all")
    # twinchat's servers run with their defaults: 5 says/s is within the per-client limit.
    server = runner.start(spec, f"fixed-rate-{label}")
    try:
        runner.join_room(spec, server.port, members - senders, senders, window=0)
        start_at = time.monotonic() + 0.3
        measure_at = start_at + sizes.rate_warmup
        end_at = measure_at + sizes.rate_duration
        phases = [k / (senders * rate) for k in range(senders)]  # spread over one period
        first = 0
        for i, count in enumerate(split(senders, len(pool))):
            pool.send(
                i, "rate_run", start=start_at, measure=measure_at, end=end_at, rate=rate,
                offsets=phases[first : first + count],
            )  # fmt: skip
            first += count
        # The server's own count is read over its own window, just outside the CPU window:
        # a scrape costs the server CPU, and on the threaded server a thread of its own.
        sleep_until(measure_at - SCRAPE_LEAD)
        counted0 = server.counter(DELIVERED), time.monotonic()
        sleep_until(measure_at)
        before = CpuReading.now(server.pid)
        perf = _perf(runner, server.pid, f"{spec.name}-fixed-rate-{label}")
        sleep_until(end_at)
        after = CpuReading.now(server.pid)
        counted1 = server.counter(DELIVERED), time.monotonic()
        stop_profiler(perf)
        runs = [pool.recv(i) for i in range(len(pool))]
        pool.all("close_all")
        alive = server.alive()
    finally:
        server.stop()
    return _row(spec, sizes, runs, before, after, (counted0, counted1), alive)


def _row(
    spec: Spec,
    sizes: Sizes,
    runs: list[dict],
    before: CpuReading,
    after: CpuReading,
    counted: tuple[tuple[float | None, float], tuple[float | None, float]],
    alive: bool,
) -> dict:
    """The figures of one measurement, from the workers' replies and the server's readings."""
    members = sizes.rate_members
    seconds, server_cpu = after.t - before.t, after.exact - before.exact
    deliveries = sum(r["frames"] for r in runs)
    client_cpu = sum(r["cpu_seconds"] for r in runs)
    client_seconds = max(r["seconds"] for r in runs)
    offered = sizes.rate_senders * sizes.rate_per_sender
    expected = offered * members * client_seconds
    row = {
        "members": members,
        "senders": sizes.rate_senders,
        "rate_per_sender": sizes.rate_per_sender,
        "offered_says_per_s": offered,
        "says_per_s": round(sum(r["says"] for r in runs) / client_seconds, 2),
        "acks_per_s": round(sum(r["acks"] for r in runs) / client_seconds, 2),
        "max_send_lag_ms": round(max(r["max_send_lag"] for r in runs) * 1000, 2),
        "seconds": round(seconds, 3),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / client_seconds, 1),
        "achieved": round(deliveries / expected, 4) if expected else None,
        "server_cpu_seconds": round(server_cpu, 4),
        "server_us_per_delivery": round(server_cpu / deliveries * 1e6, 3) if deliveries else None,
        "server_cpu_util": round(server_cpu / seconds, 3),
        "server_threads": [before.threads, after.threads],
        "client_cpu_util": round(client_cpu / client_seconds, 3),
        "client_us_per_delivery": round(client_cpu / deliveries * 1e6, 3) if deliveries else None,
        "client_saturated": client_cpu / client_seconds > SATURATED,
        # On loopback the server's CPU wakes the client: fewer frames per wake-up cost it more.
        "client_wakeups_per_s": round(sum(r["wakeups"] for r in runs) / client_seconds, 1),
        "lost_connections": sum(r["lost_connections"] for r in runs),
        "server_alive": alive,
    }
    (count0, at0), (count1, at1) = counted
    if spec.chat and count0 is not None and count1 is not None:
        # Rates, since the two counts cover windows a scrape apart.
        server_rate = (count1 - count0) / (at1 - at0)
        row["server_counted_deliveries_per_s"] = round(server_rate, 1)
        row["server_count_vs_received"] = (
            round(server_rate / row["deliveries_per_s"], 4) if deliveries else None
        )
    row["server_cpu_seconds_proc_stat"] = round(after.ticks - before.ticks, 3)  # comparison
    # What else ran: the machine's busy CPUs less the server and the load client (the
    # coordinator's share is small), and the time the hypervisor gave to other guests.
    busy, steal = (b - a for a, b in zip(before.machine, after.machine, strict=True))
    client_in_window = row["client_cpu_util"] * row["seconds"]  # its rate over the server's window
    row["others_cpu_util"] = round(max(0.0, busy - server_cpu - client_in_window) / seconds, 3)
    row["steal_util"] = round(steal / seconds, 3)
    return row


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per server: the median round (by CPU per delivery), every round's figure,
    and for twinchat's servers the per-round ratio to their bare reference."""
    out: dict[str, dict] = {}
    for name, rows in runs.items():
        out[name] = median_run(rows, "server_us_per_delivery")
        out[name]["runs"] = rows  # every round's figures, in the order they ran
    for name, bare in BARE_OF.items():
        mine, theirs = runs.get(name), runs.get(bare)
        if not mine or not theirs:
            continue
        cost = {row["round"]: row["server_us_per_delivery"] for row in theirs}
        per_round = [
            round(row["server_us_per_delivery"] / cost[row["round"]], 3)
            for row in mine
            if row["server_us_per_delivery"] and cost.get(row["round"])
        ]
        if per_round:
            out[name]["reference"] = bare
            out[name]["x_bare_per_round"] = per_round
            out[name]["x_bare"] = round(statistics.median(per_round), 3)
    return out


def _perf(runner: Runner, pid: int, name: str) -> subprocess.Popen | None:
    """``perf record -g`` of ``pid`` over the measured window (C level: kernel, interpreter)."""
    if not runner.perf:
        return None
    path = runner.logs / f"{name}.perf.data"
    return subprocess.Popen(
        ["perf", "record", "-g", "-F", "999", "-p", str(pid), "-o", str(path),
         "--", "sleep", str(runner.sizes.rate_duration)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
