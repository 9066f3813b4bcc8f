"""The five servers under test, started pinned to the server CPU, and what /proc says of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from loadtest import prom
from loadtest.pinning import on_cpus
from loadtest.schedstat import task_times
from loadtest.serverproc import PROJECT_ROOT, ServerProcess, free_port, start_server, stop_process


@dataclass(frozen=True)
class Spec:
    """A server under test. ``chat``: speaks twinchat's protocol (else a bare reference)."""

    name: str
    model: str  # "threads" or "asyncio"
    chat: bool
    kind: str  # serverproc kind, or the refs model
    args: tuple[str, ...] = ()


SPECS = (
    Spec("threaded", "threads", True, "threaded"),
    Spec("async-uvloop", "asyncio", True, "async", ("--loop", "uvloop")),
    Spec("async-asyncio", "asyncio", True, "async", ("--loop", "asyncio")),
    Spec("bare-threaded", "threads", False, "threaded"),
    Spec("bare-asyncio", "asyncio", False, "asyncio"),
)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}
# Each twinchat server against the bare reference of its model.
BARE_OF = {
    "threaded": "bare-threaded",
    "async-uvloop": "bare-asyncio",
    "async-asyncio": "bare-asyncio",
}

# Throughput runs measure fan-out, not the per-client rate limit (20/s, burst 40). While a
# room of 5,000 is set up, the server is busy with presence messages for a minute: handshakes
# waiting behind them must not hit the default 10 s open timeout.
UNLIMITED = ("--rate", "100000", "--burst", "100000", "--open-timeout", "300")


@dataclass
class Running:
    """A started server; ``owner``: twinchat's :class:`ServerProcess` (None for a reference)."""

    port: int
    proc: subprocess.Popen
    owner: ServerProcess | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def counter(self, name: str) -> float | None:
        """The value of counter ``name`` on the server's /metrics (None for a bare reference)."""
        if self.owner is None:
            return None
        return prom.parse(self.owner.metrics_text()).get(name)

    def stop(self) -> int:
        return stop_process(self.proc)


def start(spec: Spec, extra: tuple[str, ...], cpu: int | None, log_path: Path) -> Running:
    """Start ``spec`` on free loopback ports, pinned to ``cpu``, and wait until it serves."""
    if spec.chat:
        server = start_server(spec.kind, *spec.args, *extra, cpu=cpu, log_path=log_path)
        return Running(server.port, server.proc, server)
    port = free_port()
    command = [sys.executable, "-m", "loadtest.bench.refs", spec.kind, "--port", str(port)]
    command = on_cpus(command, cpu)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Running(port, proc)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{spec.name} did not listen within 15 s")


# /proc


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid``, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def exact_cpu_seconds(pid: int) -> tuple[float, int]:
    """CPU time of ``pid``'s live threads, exact, and how many threads were read.

    The sum of :func:`loadtest.schedstat.task_times` (schedstat: nanoseconds on a
    CPU, which the scheduler adds up at every switch, per thread). User and
    system time (:func:`cpu_seconds`, ``/proc/<pid>/stat``) come from sampling
    whichever thread runs at each tick (``CONFIG_TICK_CPU_ACCOUNTING``, 250 Hz
    here), in 10 ms units; for a whole process this kernel scales the sampled
    split to the scheduler's exact total, so the two agree within 10 ms over a
    window, but per thread only schedstat is exact. A thread that exits between
    two readings takes its time with it: compare readings taken while no thread
    starts or ends.
    """
    tasks = task_times(pid) or {}
    return sum(t.cpu for t in tasks.values()), len(tasks)


class CpuReading(NamedTuple):
    """A server's CPU seconds at one moment, read from outside: ``exact`` (its live
    threads' schedstat, of ``threads`` threads), ``ticks`` (the whole process's
    tick-sampled ``/proc/<pid>/stat``, kept for comparison) and the machine's busy and
    stolen seconds (:func:`machine_cpu`), at monotonic time ``t``."""

    exact: float
    threads: int
    ticks: float
    machine: tuple[float, float]
    t: float

    @classmethod
    def now(cls, pid: int) -> CpuReading:
        exact, threads = exact_cpu_seconds(pid)
        return cls(exact, threads, cpu_seconds(pid), machine_cpu(), time.monotonic())


def machine_cpu() -> tuple[float, float]:
    """Seconds the machine's CPUs spent busy (user, nice, system, irq, softirq)
    and stolen by the hypervisor, since boot, from the ``cpu`` line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def footprint(pid: int) -> dict:
    """Resident memory (KiB), OS threads and open fds of ``pid``."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()
    return {
        "rss_kib": int(status["VmRSS"][0]),
        "threads": int(status["Threads"][0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }
