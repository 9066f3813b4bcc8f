"""The three scenarios, run by the coordinator against each server in turn.

The coordinator starts the server pinned to the server CPU, drives the
worker processes (pinned to the client CPU) and reads the server's CPU time,
memory, threads and fds from /proc, so the bare references (which have no
/metrics) are measured exactly like twinchat's servers. Every server gets a
fresh process for every scenario and size.
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench import worker as worker_module
from loadtest.bench.servers import UNLIMITED, CpuReading, Running, Spec, cpu_seconds, footprint
from loadtest.bench.servers import start as start_spec

HOST = "127.0.0.1"
SATURATED = 0.9  # a CPU busier than this is the bottleneck


@dataclass(frozen=True)
class Sizes:
    receivers: tuple[int, ...]
    senders: int
    window: int  # says in flight per sender
    text_len: int
    warmup: float
    duration: float
    async_cap: int
    threaded_cap: int
    bare_threaded_cap: int
    probe: int  # the first capacity measurement ("at 1,000")
    room_size: int  # idle connections join rooms of this many
    handshake_seconds: float
    handshake_concurrency: int
    workers: int
    reply_timeout: float  # bound on any one worker command
    rounds: int  # fan-out and fixed-rate runs per server, interleaved across servers
    rate_members: int  # fixed rate: members of the one room, senders included
    rate_senders: int
    rate_per_sender: float  # says/s per sender
    rate_warmup: float
    rate_duration: float


SIZES = {
    "smoke": Sizes(
        receivers=(10,), senders=2, window=16, text_len=64, warmup=0.3, duration=1.0,
        async_cap=40, threaded_cap=40, bare_threaded_cap=40, probe=20, room_size=10,
        handshake_seconds=1.0, handshake_concurrency=4, workers=2, reply_timeout=60,
        rounds=1, rate_members=20, rate_senders=4, rate_per_sender=5.0, rate_warmup=0.5,
        rate_duration=1.5,
    ),
    "full": Sizes(
        receivers=(100, 1000, 5000), senders=4, window=32, text_len=64, warmup=1.0,
        duration=5.0, async_cap=10_000, threaded_cap=20_000, bare_threaded_cap=19_500,
        probe=1000, room_size=10, handshake_seconds=4.0, handshake_concurrency=32, workers=4,
        reply_timeout=180, rounds=3, rate_members=200, rate_senders=20, rate_per_sender=5.0,
        rate_warmup=3.0, rate_duration=10.0,
    ),
}  # fmt: skip


def cap_for(spec: Spec, sizes: Sizes) -> int:
    if spec.model == "asyncio":
        return sizes.async_cap
    return sizes.threaded_cap if spec.chat else sizes.bare_threaded_cap


class Pool:
    """The load-client worker processes, each pinned to ``cpu``."""

    def __init__(self, count: int, cpu: int | None, reply_timeout: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.reply_timeout = reply_timeout
        self.pipes = []
        self.procs = []
        for _ in range(count):
            parent, child = context.Pipe()
            proc = context.Process(target=worker_module.main, args=(child, cpu), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.pipes)

    def send(self, index: int, name: str, **kwargs) -> None:
        self.pipes[index].send((name, kwargs))

    def recv(self, index: int) -> dict:
        pipe = self.pipes[index]
        if not pipe.poll(self.reply_timeout):
            raise TimeoutError(f"worker {index} did not answer within {self.reply_timeout} s")
        reply = pipe.recv()
        if "error" in reply:
            raise RuntimeError(f"worker {index}: {reply['error']}\n{reply.get('trace', '')}")
        return reply

    def all(self, name: str, per_worker: list[dict] | None = None, **kwargs) -> list[dict]:
        """Send ``name`` to every worker (with its own kwargs when given); collect replies."""
        for i in range(len(self)):
            self.send(i, name, **{**kwargs, **(per_worker[i] if per_worker else {})})
        return [self.recv(i) for i in range(len(self))]

    def close(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.is_alive():
                try:
                    self.send(i, "quit")
                except OSError:
                    pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal shares, the larger ones first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Runner:
    pool: Pool
    sizes: Sizes
    logs: Path
    server_cpu: int | None
    profile: bool = False  # py-spy the server during each fan-out measurement
    perf: bool = False  # perf record -g the server during each fixed-rate measurement

    def start(self, spec: Spec, scenario: str, extra: tuple[str, ...] = ()) -> Running:
        """Start ``spec`` pinned to the server CPU, its output in ``logs/<name>-<scenario>.log``."""
        log = self.logs / f"{spec.name}-{scenario}.log"
        return start_spec(spec, extra, self.server_cpu, log)

    def join_room(
        self, spec: Spec, port: int, receivers: int, senders: int, window: int
    ) -> list[dict]:
        """Connect ``receivers`` and ``senders`` to one room, shared among the workers (each
        sender keeps ``window`` says in flight in ``fanout_run``); the workers' replies.
        Raise unless every member connected."""
        pool = self.pool
        shares = zip(split(receivers, len(pool)), split(senders, len(pool)), strict=True)
        setup = pool.all(
            "fanout_setup",
            [{"receivers": r, "senders": s, "worker": i} for i, (r, s) in enumerate(shares)],
            host=HOST, port=port, chat=spec.chat, room="bench",
            text_len=self.sizes.text_len, window=window,
        )  # fmt: skip
        connected = sum(r["connected"] for r in setup)
        if connected < receivers + senders:
            errors = [e for r in setup for e in r["errors"]]
            raise RuntimeError(f"{spec.name}: only {connected} members connected: {errors}")
        return setup

    # Fan-out

    def fanout(self, spec: Spec, receivers: int) -> dict:
        sizes, pool = self.sizes, self.pool
        pool.all("close_all")  # nothing left over from a scenario that failed
        server = self.start(spec, f"fanout-{receivers}", UNLIMITED if spec.chat else ())
        try:
            setup = self.join_room(spec, server.port, receivers, sizes.senders, sizes.window)
            start_at = time.monotonic() + 0.3
            measure_at = start_at + sizes.warmup
            end_at = measure_at + sizes.duration
            for i in range(len(pool)):
                pool.send(i, "fanout_run", start=start_at, measure=measure_at, end=end_at)
            sleep_until(measure_at)
            spy = self._py_spy(server.pid, f"{spec.name}-fanout-{receivers}")
            # Every member is connected before the window and stays: no thread of the server
            # starts or ends inside it, so the sum over its threads' schedstat is exact.
            before = CpuReading.now(server.pid)
            sleep_until(end_at)
            after = CpuReading.now(server.pid)
            stop_profiler(spy, interrupt_after=10)
            runs = [pool.recv(i) for i in range(len(pool))]
            pool.all("close_all")
            alive = server.alive()
        finally:
            server.stop()
        seconds = after.t - before.t
        deliveries = sum(r["frames"] for r in runs)
        server_cpu = after.exact - before.exact
        client_cpu = sum(r["cpu_seconds"] for r in runs)
        return {
            "receivers": receivers,
            "senders": sizes.senders,
            "members": receivers + sizes.senders,  # join_room checked they all connected
            "setup_retries": sum(r["retries"] for r in setup),
            "window_per_sender": sizes.window,
            "seconds": round(seconds, 3),
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / seconds, 1),
            "says_per_s": round(sum(r["acks"] for r in runs) / seconds, 1),
            "server_cpu_seconds": round(server_cpu, 3),
            "server_cpu_seconds_proc_stat": round(after.ticks - before.ticks, 3),  # comparison
            "server_cpu_s_per_1m_deliveries": (
                round(server_cpu / deliveries * 1e6, 2) if deliveries else None
            ),
            "server_cpu_util": round(server_cpu / seconds, 3),
            "client_cpu_util": round(client_cpu / seconds, 3),
            "client_saturated": client_cpu / seconds > SATURATED,
            "lost_connections": sum(r["lost_connections"] for r in runs),
            "server_alive": alive,
        }

    def _py_spy(self, pid: int, name: str) -> subprocess.Popen | None:
        """Sample the GIL holder of ``pid`` over the measurement window (collapsed stacks)."""
        if not self.profile:
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        return subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--duration", str(int(self.sizes.duration)),
             "--rate", "50", "--nonblocking", "--gil", "--format", "raw",
             "--output", str(self.logs / f"{name}.pyspy.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    # Connection capacity

    def capacity(self, spec: Spec) -> dict:
        sizes, pool = self.sizes, self.pool
        cap = cap_for(spec, sizes)
        pool.all("close_all")
        server = self.start(spec, "capacity")
        try:
            time.sleep(0.3)
            base = footprint(server.pid)

            def open_upto(total: int) -> list[dict]:
                return pool.all(
                    "open_idle",
                    [{"upto": n, "first_index": i * 1_000_000}
                     for i, n in enumerate(split(total, len(pool)))],
                    host=HOST, port=server.port, chat=spec.chat, room_size=sizes.room_size,
                    concurrency=32, timeout=10.0,
                )  # fmt: skip

            def measure() -> dict:
                time.sleep(1.0)  # let the server settle (threads started, buffers freed)
                held = sum(r["held"] for r in pool.all("count_open"))
                now = footprint(server.pid) if server.alive() else None
                return _per_connection(base, now, held)

            started = time.monotonic()
            first = open_upto(min(sizes.probe, cap))
            at_probe = measure()
            replies = open_upto(cap)
            open_seconds = time.monotonic() - started
            at_max = measure()
            refused = [msg for r in first + replies for msg in r["refused"]]
            stopped = any(r["stopped"] for r in first + replies)
            pool.all("close_all")
            alive = server.alive()
        finally:
            server.stop()
        return {
            "cap": cap,
            "held": at_max["connections"],
            "stopped_by_refusal": stopped,
            "refusals": refused[:3],
            "server_alive": alive,
            "open_seconds": round(open_seconds, 1),
            "baseline": base,
            "at_probe": at_probe,
            "at_max": at_max,
        }

    # Handshake rate

    def handshake(self, spec: Spec) -> dict:
        sizes, pool = self.sizes, self.pool
        server = self.start(spec, "handshake")
        try:
            # Whole-process CPU, not the threads' schedstat: the threaded server starts and
            # ends a thread per handshake, and an ended thread's time leaves schedstat with it.
            cpu0 = cpu_seconds(server.pid)
            replies = pool.all(
                "handshakes",
                [{"concurrency": c} for c in split(sizes.handshake_concurrency, len(pool))],
                host=HOST, port=server.port, chat=spec.chat,
                duration=sizes.handshake_seconds, timeout=10.0,
            )  # fmt: skip
            cpu1 = cpu_seconds(server.pid)
            alive = server.alive()
        finally:
            server.stop()
        seconds = max(r["seconds"] for r in replies)
        completed = sum(r["completed"] for r in replies)
        client_cpu = sum(r["cpu_seconds"] for r in replies)
        return {
            "concurrency": sizes.handshake_concurrency,
            "seconds": round(seconds, 3),
            "completed": completed,
            "failed": sum(r["failed"] for r in replies),
            "failures": [f for r in replies for f in r["failures"]][:3],
            "handshakes_per_s": round(completed / seconds, 1),
            "server_cpu_util": round((cpu1 - cpu0) / seconds, 3),
            "server_cpu_ms_per_handshake": (
                round((cpu1 - cpu0) / completed * 1000, 3) if completed else None
            ),
            "client_cpu_util": round(client_cpu / seconds, 3),
            "client_saturated": client_cpu / seconds > SATURATED,
            "server_alive": alive,
        }


def _per_connection(base: dict, now: dict | None, held: int) -> dict:
    if now is None:
        return {"connections": held, "server_dead": True}
    out = {"connections": held, **now}
    if held:
        out["rss_kib_per_connection"] = round((now["rss_kib"] - base["rss_kib"]) / held, 2)
        out["threads_per_connection"] = round(now["threads"] / held, 4)
        out["fds_per_connection"] = round(now["fds"] / held, 4)
    return out


def stop_profiler(proc: subprocess.Popen | None, interrupt_after: float | None = None) -> None:
    """Wait (bounded) for a profiler, if any, to write its file, then make sure it is gone.

    py-spy falls behind on a process with thousands of threads: with ``interrupt_after``,
    a profiler still running after that many seconds gets SIGINT, and keeps what it has.
    """
    if proc is None:
        return
    if interrupt_after is not None:
        try:
            proc.wait(interrupt_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sleep_until(instant: float) -> None:
    """Sleep until ``instant`` (a ``time.monotonic()`` value); return at once if it passed."""
    delay = instant - time.monotonic()
    if delay > 0:
        time.sleep(delay)
