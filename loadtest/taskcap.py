"""A cap on the tasks (processes and threads) of one process tree: a pids cgroup,
as ``docker run --pids-limit`` sets one.

Every thread takes an id from the machine-wide ``kernel.pid_max`` (32,768 here).
A thread-per-connection server that runs into that limit takes the machine's
last ids with it, and every other process's fork and thread start fails too
(``EAGAIN``), the harness that runs it included. Inside a pids cgroup the server
meets the same wall, ``can't start new thread`` from the same ``clone()``
failing with ``EAGAIN``, at a count that leaves the rest of the machine a
reserve (:func:`machine_headroom`). The tests use a small cap to provoke the
wall cheaply.

Works with cgroup v2 (``pids.max`` in the unified hierarchy) and v1 (the
``pids`` controller); needs root (:mod:`loadtest.cgroup`). Where neither can be written,
:func:`TaskCap.create` raises :class:`CapUnavailable` with the reason.

Usage::

    cap = TaskCap.create(30_000, "twinchat-threaded")
    proc = subprocess.Popen(cmd, preexec_fn=cap.enter)  # the child joins before exec
    cap.current(), cap.refusals()   # tasks in the group now, forks refused so far
    cap.remove()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loadtest import cgroup

RESERVE = 2000  # task ids left to the rest of the machine by machine_headroom()
CONTROLLER, V1_FILE = "pids", "cgroup.procs"

CapUnavailable = cgroup.Unavailable  # no cgroup with a pids controller can be written here


@dataclass
class TaskCap(cgroup.Group):
    """A cgroup whose processes may hold at most ``limit`` tasks (threads included)."""

    limit: int

    @classmethod
    def create(cls, limit: int, name: str) -> TaskCap:
        """Make the group ``name`` (suffixed with this pid) capped at ``limit`` tasks."""
        if limit < 1:
            raise ValueError(f"a task cap must be at least 1, not {limit}")
        version, path = cgroup.make(CONTROLLER, V1_FILE, name, {"pids.max": str(limit)})
        return cls(path, version, limit)

    def current(self) -> int | None:
        """Tasks in the group now."""
        return _int(self.path / "pids.current")

    def refusals(self) -> int | None:
        """Forks and thread starts the cap refused so far (``pids.events``: ``max N``)."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
            return None
        return None

    def describe(self) -> str:
        return f"{self.limit:,} tasks (pids cgroup v{self.version}, {self.path.name})"


def tasks_in_use() -> int | None:
    """Tasks (threads) on the whole machine now (``/proc/loadavg``, fourth field)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return None


def machine_headroom(reserve: int = RESERVE) -> int | None:
    """Task ids the machine has left under ``kernel.pid_max`` and ``threads-max``, minus
    ``reserve`` for everything else that runs meanwhile (None when unknown)."""
    limits = [_int(Path(p)) for p in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max")]
    known = [v for v in limits if v]
    used = tasks_in_use()
    if not known or used is None:
        return None
    return max(1, min(known) - used - reserve)


def available() -> str | None:
    """None when a cap can be set here, else the reason it cannot."""
    return cgroup.unavailable(CONTROLLER, V1_FILE)


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
