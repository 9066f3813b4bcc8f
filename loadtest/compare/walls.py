"""The evidence of a connection wall: what the server logged and the kernel counted.

When a server refuses connections because a limit of the machine stopped it
(no thread could be started, no fd could be opened), it logs one warning at
most every 10 s per process, naming the error and the threads and connections
it held at that moment. :func:`evidence` collects those lines after a run,
with the task cap the run put the server under (:mod:`loadtest.taskcap`) and
the thread starts the kernel refused inside it; :func:`describe` says in one
sentence which wall the evidence names.
"""

from __future__ import annotations

from pathlib import Path

from loadtest.compare import figures
from loadtest.compare.steps import StepRow
from loadtest.taskcap import TaskCap

WALL_MARK = "refusing new connections"  # the servers' warning at a wall (threaded_server)
KEPT_LINES = 4


def evidence(log_path: Path | None, cap: TaskCap | None) -> dict:
    """The wall warnings in the server's log (count, first and last few) and the task cap."""
    lines: list[str] = []
    if log_path is not None and log_path.exists():
        with log_path.open(errors="replace") as handle:
            lines = [line.rstrip() for line in handle if WALL_MARK in line]
    return {
        "warnings": len(lines),
        "first_warnings": lines[:KEPT_LINES],
        "last_warning": lines[-1] if lines else None,
        "task_cap": cap.limit if cap else None,
        "task_cap_refusals": cap.refusals() if cap else None,
        "task_cap_why": (
            "the machine's task ids left under kernel.pid_max and threads-max when the run "
            "started, minus a reserve for the rest of the machine (docs/compare.md)"
            if cap
            else None
        ),
    }


def describe(run: dict, machine: dict) -> str | None:
    """One sentence: the wall this run met, from its refusals, warnings and limits."""
    limit = run.get("limit") or {}
    if not limit.get("reached"):
        return None
    row = figures.row(run, limit.get("step"))
    # The run the limit step belongs to: the climb, or one of the narrowing runs.
    source = next((n for n in run.get("narrowing") or [] if row and n.get("name") == row.run), run)
    wall = source.get("wall") or {}
    parts = [f"{run['name']}: {limit['criterion']} at {limit['users']:,} users"]
    if row is not None:
        parts += _step_evidence(row, run.get("workers", 1), machine.get("cpus") or 1)
    failures = source.get("locust_failures") or []
    if failures:
        top = failures[0]
        parts.append(f"Locust's commonest failure: {top['name']} {top['error']} "
                     f"({top['occurrences']:,})")  # fmt: skip
    if wall.get("last_warning"):
        parts.append(f"the server logged: \u201c{_message(wall['last_warning'])}\u201d")
    if wall.get("task_cap"):
        parts.append(
            f"the kernel refused {wall.get('task_cap_refusals') or 0:,} thread starts at the "
            f"task cap of {wall['task_cap']:,} (kernel.pid_max {machine.get('pid_max')}, "
            f"threads-max {machine.get('threads_max')})"
        )
    return "; ".join(parts) + "."


def _step_evidence(row: StepRow, workers: int, cpus: int) -> list[str]:
    """What the limit step's own figures say: refusals, threads held, CPU and waiting."""
    parts = []
    if row.rejected:
        parts.append(
            "refusals by reason " + ", ".join(f"{k} {v:,.0f}" for k, v in row.rejected.items())
        )
    if row.threads is not None:
        parts.append(
            f"its {workers} processes held {row.threads:,.0f} threads and "
            f"{(row.connections or 0):,.0f} connections"
        )
    if row.cpu_cores_exact is not None and row.wait_to_run_per_s is not None:
        parts.append(
            f"over its last seconds its threads used {min(row.cpu_cores_exact, cpus):.1f} of "
            f"the machine's {cpus} CPUs and spent {row.wait_to_run_per_s:,.0f} s "
            "per second waiting to run (that many threads runnable at once, on average)"
        )
    return parts


def _message(line: str) -> str:
    """The message of a log line, without its timestamp and logger."""
    return line.split(": ", 1)[-1]
