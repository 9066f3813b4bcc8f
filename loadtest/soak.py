"""Soak benchmark (not a test): the chat scenario for a long time, watching for drift.

    python -m loadtest.soak --server threaded --users 1000 --duration 600
    python -m loadtest.soak --server async            # users: half the limit `make compare` found

Starts the server (pinned to CPU 0 when ``taskset`` exists; this client pins
itself to CPU 1), connects ``--users`` clients in rooms of ``--room-size`` on
one asyncio event loop, and lets each say ``--text-size`` characters every
``--say-every`` seconds, like the Locust ``chat`` scenario. Every client checks
what it receives: seq per room +1 with no gap, no error frame, no close it did
not ask for. Every ``--sample-every`` seconds the server's /metrics gives RSS,
open fds, threads and connections.

The report compares the first steady sample (after the ramp and
``--warmup``) with the last: RSS drift (absolute, and the slope of a
least-squares line through the steady samples, in MiB per hour), fds and
threads at start and end, and every failure, counted by kind. It is printed
and written to reports/soak-<server>-<timestamp>/soak.json and soak.md.

Default users: half of the server's limit in reports/latest/summary.json (the
``make compare`` report) when it names one, else ``--fallback-users``.
Everything is bounded: ramp, ``--duration``, then the clients close and the
server gets SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from loadtest import fit, pinning, prom
from loadtest.serverproc import PROJECT_ROOT, running_server

MIB = 1024 * 1024
SAMPLED = {
    "rss": "process_resident_memory_bytes",
    "fds": "process_open_fds",
    "threads": "chat_threads",
    "connections": "chat_connections",
}


@dataclass
class Sample:
    t: float
    rss: float = 0.0
    fds: float = 0.0
    threads: float = 0.0
    connections: float = 0.0
    client_cpu_percent: float = 0.0  # this load generator: near 100 means it measured itself


@dataclass
class Totals:
    said: int = 0
    received: int = 0
    failures: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # fanout, seconds, sampled


class SoakClient:
    """One chat user: connect, hello, join its room, say something every say_every s."""

    def __init__(self, n: int, args: argparse.Namespace, url: str, totals: Totals) -> None:
        self.n, self.args, self.url, self.totals = n, args, url, totals
        self.room = f"soak-{n // args.room_size}"
        self.name = f"soak{n}"
        self.last_seq: int | None = None

    async def run(self, stop: asyncio.Event, ready: asyncio.Event) -> None:
        fail = self.totals.failures
        try:
            async with connect(self.url, open_timeout=30, max_size=2**20, compression=None,
                               close_timeout=5) as ws:  # fmt: skip
                await ws.send(json.dumps({"type": "hello", "name": self.name}))
                await ws.send(json.dumps({"type": "join", "room": self.room}))
                reader = asyncio.create_task(self._read(ws))
                ready.set()
                await asyncio.sleep(random.uniform(0, self.args.say_every))
                text = "s" * self.args.text_size
                while not stop.is_set() and not reader.done():
                    await ws.send(json.dumps({"type": "say", "room": self.room, "text": text,
                                              "sent_at": time.time()}))  # fmt: skip
                    self.totals.said += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.args.say_every)
                if reader.done():
                    reader.result()
                reader.cancel()
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            fail[f"closed by server ({code})"] += 1
        except (OSError, TimeoutError) as exc:
            fail[f"connect: {type(exc).__name__}"] += 1
        except Exception as exc:  # reported, never raised out of the benchmark
            fail[f"{type(exc).__name__}: {exc}"[:80]] += 1
        finally:
            ready.set()

    async def _read(self, ws) -> None:
        totals = self.totals
        async for raw in ws:
            message = json.loads(raw)
            kind = message["type"]
            if kind == "message":
                totals.received += 1
                seq = message["seq"]
                if self.last_seq is not None and seq != self.last_seq + 1:
                    totals.failures["seq gap"] += 1
                self.last_seq = seq
                if message.get("from") == self.name and len(totals.latencies) < 200_000:
                    totals.latencies.append(time.time() - message["sent_at"])
            elif kind == "joined":
                self.last_seq = message["seq"]
            elif kind == "error":
                totals.failures[f"error {message['code']}"] += 1
            elif kind not in ("welcome", "presence", "pong"):
                totals.failures[f"unexpected {kind}"] += 1


async def soak(args: argparse.Namespace, url: str, metrics_url: str) -> dict:
    totals = Totals()
    stop = asyncio.Event()
    samples: list[Sample] = []
    tasks = []
    started = time.monotonic()

    me = psutil.Process()
    me.cpu_percent()

    def sample() -> Sample:
        values = prom.scrape(metrics_url, timeout=5) or {}
        now = time.monotonic() - started
        s = Sample(now, **{key: values.get(name, 0.0) for key, name in SAMPLED.items()})
        s.client_cpu_percent = me.cpu_percent()
        samples.append(s)
        return s

    baseline = sample()
    # Ramp: --spawn-rate new clients per second, each waits for its handshake slot.
    for n in range(args.users):
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(SoakClient(n, args, url, totals).run(stop, ready)))
        if n % args.spawn_rate == args.spawn_rate - 1:
            await asyncio.sleep(1)
    ramp_s = time.monotonic() - started
    print(f"ramp done: {args.users} clients in {ramp_s:.0f} s", flush=True)
    await asyncio.sleep(args.warmup)
    steady_from = len(samples)
    sample()
    end = time.monotonic() + args.duration
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(args.sample_every, left))
        s = sample()
        elapsed = s.t - samples[steady_from].t
        print(f"{elapsed:5.0f} s  rss {s.rss / MIB:7.1f} MiB  fds {s.fds:6.0f}  threads "
              f"{s.threads:6.0f}  conns {s.connections:6.0f}  said {totals.said}  "
              f"received {totals.received}  failures {sum(totals.failures.values())}  "
              f"client cpu {s.client_cpu_percent:.0f}%",
              flush=True)  # fmt: skip
    said_steady = totals.said
    stop.set()
    await asyncio.wait(tasks, timeout=60)
    steady = samples[steady_from:]
    first, last = steady[0], steady[-1]
    slope = (fit.slope((s.t, s.rss) for s in steady) or 0.0) * 3600 / MIB
    lat = sorted(totals.latencies)
    return {
        "users": args.users,
        "room_size": args.room_size,
        "say_every": args.say_every,
        "duration_s": args.duration,
        "ramp_s": round(ramp_s, 1),
        "baseline": asdict(baseline),
        "start": asdict(first),
        "end": asdict(last),
        "rss_drift_mib": round((last.rss - first.rss) / MIB, 2),
        "rss_slope_mib_per_hour": round(slope, 2),
        "rss_per_connection_kib": round((first.rss - baseline.rss) / max(1, args.users) / 1024, 1),
        "said": said_steady,
        "received": totals.received,
        "fanout_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "fanout_p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else None,
        "failures": dict(totals.failures),
        "client_cpu_percent_max": max(s.client_cpu_percent for s in steady),
        "samples": [asdict(s) for s in samples],
    }


def users_from_compare(kind: str, summary: Path) -> int | None:
    """Half the limit (users) `make compare` found for ``kind``, if it found one."""
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    if data.get("scenario") != "chat":
        return None
    for row in data.get("headline", []):
        if row.get("server") == kind and row.get("limit_users"):
            return int(row["limit_users"]) // 2
    return None


def markdown(kind: str, result: dict, date: str) -> str:
    s, e = result["start"], result["end"]
    failures = ", ".join(f"{k}: {v}" for k, v in result["failures"].items()) or "none"
    return "\n".join([
        f"### Soak, {kind} server ({date})",
        "",
        f"{result['users']} users ({result['users_source']}), rooms of {result['room_size']}, "
        f"one message every {result['say_every']:g} s each, {result['duration_s'] / 60:g} min "
        f"steady after a {result['ramp_s']:.0f} s ramp.",
        "",
        "| | start | end |",
        "|---|---|---|",
        f"| RSS | {s['rss'] / MIB:.1f} MiB | {e['rss'] / MIB:.1f} MiB |",
        f"| open fds | {s['fds']:.0f} | {e['fds']:.0f} |",
        f"| threads | {s['threads']:.0f} | {e['threads']:.0f} |",
        f"| connections | {s['connections']:.0f} | {e['connections']:.0f} |",
        "",
        f"RSS drift {result['rss_drift_mib']:+.1f} MiB (slope "
        f"{result['rss_slope_mib_per_hour']:+.1f} MiB/h); {result['said']} messages said, "
        f"{result['received']} delivered; fanout p50 "
        f"{result['fanout_p50_ms']} ms, p99 {result['fanout_p99_ms']} ms; failures: {failures}; "
        f"load generator CPU at most "
        f"{result['client_cpu_percent_max']:.0f}%.",
        "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=["threaded", "async"], required=True)
    parser.add_argument("--users", type=int, help="default: half the compare limit")
    parser.add_argument("--fallback-users", type=int, default=2000)
    parser.add_argument("--compare-summary", type=Path,
                        default=PROJECT_ROOT / "reports/latest/summary.json")  # fmt: skip
    parser.add_argument("--room-size", type=int, default=25)
    parser.add_argument("--say-every", type=float, default=5.0)
    parser.add_argument("--text-size", type=int, default=40)
    parser.add_argument("--duration", type=float, default=600.0, help="steady seconds")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--spawn-rate", type=int, default=200)
    parser.add_argument("--sample-every", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports")
    parser.add_argument("server_args", nargs="*", help="extra server flags, after --")
    args = parser.parse_args(argv)
    source = "--users"
    if args.users is None:
        args.users = users_from_compare(args.server, args.compare_summary)
        source = f"half the limit in {args.compare_summary.name}"
        if args.users is None:
            args.users = args.fallback_users
            source = "no compare limit found: --fallback-users"
    cpu = None
    if hasattr(os, "sched_setaffinity") and pinning.cpus() >= 2:  # this client on CPU 1
        os.sched_setaffinity(0, {1})
        cpu = pinning.SERVER_CPU
    date = time.strftime("%Y-%m-%d %H:%M")
    out = args.out / f"soak-{args.server}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"soak {args.server}: {args.users} users ({source}), {args.duration:.0f} s", flush=True)
    with running_server(args.server, *args.server_args, cpu=cpu,
                        log_path=out / "server.log") as srv:  # fmt: skip
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        result = runner(soak(args, srv.url, srv.metrics_url))
        result["exit_code"] = srv.stop()
    result.update(server=args.server, users_source=source, date=date,
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                  f"{platform.python_version()}")  # fmt: skip
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    md = markdown(args.server, result, date)
    (out / "soak.md").write_text(md)
    print(md)
    failed = sum(result["failures"].values()) or result["exit_code"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
