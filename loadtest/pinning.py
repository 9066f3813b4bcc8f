"""CPU pinning, the same in every runner: the server on CPU 0, the load on the others.

A measured server and its load generator must not compete for one CPU, so every
runner (compare, bench, soak, capacity) places them the same way with
``taskset``, on machines with at least two CPUs where ``taskset`` exists.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

SERVER_CPU = 0


def cpus() -> int:
    """CPUs of this machine."""
    return os.cpu_count() or 1


def available() -> bool:
    """True where a server and its load can each get CPUs of their own."""
    return cpus() >= 2 and shutil.which("taskset") is not None


def load_cpus() -> str:
    """The CPUs left for the load generator once the server has CPU 0 (``taskset`` syntax)."""
    n = cpus()
    return "1" if n <= 2 else f"1-{n - 1}"


def on_cpus(command: Sequence[str], cpu_list: int | str | None) -> list[str]:
    """``command`` run on ``cpu_list`` (``taskset -c``); unchanged for ``None`` or where
    ``taskset`` is missing. ``taskset`` execs in place: the process keeps the pid."""
    if cpu_list is None or shutil.which("taskset") is None:
        return list(command)
    return ["taskset", "-c", str(cpu_list), *command]


def pin_self(cpu: int | None) -> None:
    """Run this process (and the threads and children it starts from now on) on ``cpu``;
    nothing for ``None``. For load processes started with ``multiprocessing``, which
    ``taskset`` cannot wrap."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
