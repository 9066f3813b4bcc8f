"""What each thread of a process did, from the scheduler's own counters.

Read from ``/proc/PID/task/TID/schedstat`` (nanoseconds on a CPU and waiting
to run, which the scheduler adds up at every switch) and ``.../status``
(context switches), not from the tick-sampled ``/proc/PID/stat`` times, which
charge thousands of briefly running threads nothing at all. Every runner that
reports a server's CPU exactly reads it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TaskTimes:
    """Per-thread scheduler figures of one thread (cumulative since it started)."""

    cpu: float  # seconds on a CPU (schedstat field 1, exact)
    wait: float  # seconds runnable but waiting for a CPU (schedstat field 2)
    voluntary: int  # context switches: the thread blocked (I/O, a lock, the GIL)
    involuntary: int  # context switches: the scheduler took the CPU away


def task_times(pid: int) -> dict[int, TaskTimes] | None:
    """:class:`TaskTimes` of every thread of a process, by thread id.

    Read from ``/proc/PID/task/TID/schedstat`` and ``.../status``, not from the
    tick-sampled ``stat`` times, which charge thousands of briefly running
    threads nothing at all. Costs two small reads per thread: read it a few
    times per step, not every second.
    """
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return None
    out: dict[int, TaskTimes] = {}
    for task in tasks.iterdir():
        try:
            run, wait, _slices = (task / "schedstat").read_text().split()
            status = (task / "status").read_text()
            out[int(task.name)] = TaskTimes(
                int(run) / 1e9, int(wait) / 1e9, _field(status, "voluntary_ctxt_switches:"),
                _field(status, "nonvoluntary_ctxt_switches:"),
            )  # fmt: skip
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return out or None


def _field(status: str, name: str) -> int:
    start = status.index(name) + len(name)
    return int(status[start : status.index("\n", start)])


def task_delta(later: dict[int, TaskTimes] | None, earlier: dict[int, TaskTimes] | None) -> dict:
    """What the threads did between two :func:`task_times`: CPU and waiting seconds,
    context switches, and the busiest thread's share of the CPU time. Threads that
    ended in between are not counted (their last figures are gone with them)."""
    if not later:
        return {"cpu_seconds": None, "wait_seconds": None, "voluntary": None,
                "involuntary": None, "busiest_share": None}  # fmt: skip
    before = earlier or {}
    zero = TaskTimes(0.0, 0.0, 0, 0)
    used, wait, vol, invol = [], 0.0, 0, 0
    for tid, now in later.items():
        was = before.get(tid, zero)
        used.append(max(0.0, now.cpu - was.cpu))
        wait += max(0.0, now.wait - was.wait)
        vol += max(0, now.voluntary - was.voluntary)
        invol += max(0, now.involuntary - was.involuntary)
    total = sum(used)
    return {
        "cpu_seconds": total,
        "wait_seconds": wait,
        "voluntary": vol,
        "involuntary": invol,
        "busiest_share": max(used) / total if total > 0 else None,
    }
