"""A CPU budget for one process tree: a cgroup CPU quota, as a container limit sets one.

``docker run --cpus 0.5`` and a Kubernetes CPU limit both write a CFS quota:
the processes in the group may run ``quota`` microseconds of CPU time per
``period`` (100 ms), then wait, throttled, for the next period. The comparison
runner gives both servers the same budget when the machine cannot give the load
generator more CPUs than the server (docs/compare.md says why).

Works with cgroup v2 (``cpu.max``, where the unified hierarchy has the ``cpu``
controller) and with cgroup v1 (``cpu.cfs_quota_us``); needs root. Where
neither can be written, :func:`CpuBudget.create` raises :class:`BudgetUnavailable`
with the reason, and the caller runs without a budget and says so.

Usage::

    budget = CpuBudget.create(0.5, "twinchat-async")
    proc = subprocess.Popen(cmd, preexec_fn=budget.enter)  # the child joins before exec
    ...
    budget.throttled()   # (periods throttled, seconds throttled) so far
    budget.remove()
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000  # the kernel's and Docker's default CFS period


class BudgetUnavailable(RuntimeError):
    """No cgroup with a CPU controller can be written here (the reason is the message)."""


@dataclass
class CpuBudget:
    """A cgroup limited to ``cores`` CPUs' worth of time (``cores`` may be below 1)."""

    cores: float
    path: Path
    version: int  # 1 or 2

    @classmethod
    def create(cls, cores: float, name: str) -> CpuBudget:
        """Make the group ``name`` (suffixed with this pid) with a quota of ``cores``."""
        if cores <= 0:
            raise ValueError(f"a CPU budget must be > 0 cores, not {cores}")
        version, parent = _hierarchy()
        path = parent / f"{name}-{os.getpid()}"
        quota = max(1000, round(cores * PERIOD_US))
        try:
            if version == 2:  # children get the cpu controller only if the parent hands it on
                (parent / "cgroup.subtree_control").write_text("+cpu\n")
            path.mkdir(exist_ok=True)
            if version == 2:
                (path / "cpu.max").write_text(f"{quota} {PERIOD_US}\n")
            else:
                (path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                (path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise BudgetUnavailable(f"cannot write a CPU quota in {path}: {exc}") from exc
        return cls(cores, path, version)

    def enter(self) -> None:
        """Move the calling process into the group (use as ``preexec_fn``)."""
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def add(self, pid: int) -> None:
        """Move a running process into the group (its existing threads follow in v2 only)."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def throttled(self) -> tuple[int, float] | None:
        """(periods in which the group was throttled, seconds it waited throttled) so far."""
        try:
            stat = dict(
                line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line
            )
        except (OSError, ValueError):
            return None
        if "throttled_usec" in stat:  # v2
            return int(stat["nr_throttled"]), int(stat["throttled_usec"]) / 1e6
        if "throttled_time" in stat:  # v1, nanoseconds
            return int(stat["nr_throttled"]), int(stat["throttled_time"]) / 1e9
        return None

    def describe(self) -> str:
        return (
            f"{self.cores:g} CPU (cgroup v{self.version} quota "
            f"{round(self.cores * PERIOD_US)} µs per {PERIOD_US} µs)"
        )

    def remove(self, timeout: float = 5.0) -> None:
        """Delete the group once its processes have exited (waits up to ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # a process is still inside: leave the empty-to-be group
                time.sleep(0.05)


def _hierarchy() -> tuple[int, Path]:
    """(cgroup version, directory to create groups in) for the CPU controller."""
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return 2, CGROUP_ROOT
    v1 = CGROUP_ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        return 1, v1
    raise BudgetUnavailable(f"no cgroup CPU controller under {CGROUP_ROOT}")


def available() -> str | None:
    """None when a budget can be set here, else the reason it cannot."""
    try:
        version, parent = _hierarchy()
    except BudgetUnavailable as exc:
        return str(exc)
    if not os.access(parent, os.W_OK):
        return f"cgroup v{version} at {parent} is not writable (needs root)"
    return None
