"""A CPU budget for one process tree: a cgroup CPU quota, as a container limit sets one.

``docker run --cpus 0.5`` and a Kubernetes CPU limit both write a CFS quota:
the processes in the group may run ``quota`` microseconds of CPU time per
``period`` (100 ms), then wait, throttled, for the next period. The comparison
runner gives both servers the same budget when the machine cannot give the load
generator more CPUs than the server (docs/compare.md says why).

Works with cgroup v2 (``cpu.max``, where the unified hierarchy has the ``cpu``
controller) and with cgroup v1 (``cpu.cfs_quota_us``); needs root
(:mod:`loadtest.cgroup`). Where neither can be written,
:func:`CpuBudget.create` raises :class:`BudgetUnavailable` with the reason, and
the caller runs without a budget and says so.

Usage::

    budget = CpuBudget.create(0.5, "twinchat-async")
    proc = subprocess.Popen(cmd, preexec_fn=budget.enter)  # the child joins before exec
    ...
    budget.throttled()   # (periods throttled, seconds throttled) so far
    budget.remove()
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest import cgroup

PERIOD_US = 100_000  # the kernel's and Docker's default CFS period
CONTROLLER, V1_FILE = "cpu", "cpu.cfs_quota_us"

BudgetUnavailable = cgroup.Unavailable  # no cgroup with a CPU controller can be written here


@dataclass
class CpuBudget(cgroup.Group):
    """A cgroup limited to ``cores`` CPUs' worth of time (``cores`` may be below 1)."""

    cores: float

    @classmethod
    def create(cls, cores: float, name: str) -> CpuBudget:
        """Make the group ``name`` (suffixed with this pid) with a quota of ``cores``."""
        if cores <= 0:
            raise ValueError(f"a CPU budget must be > 0 cores, not {cores}")
        version, _ = cgroup.hierarchy(CONTROLLER, V1_FILE)
        quota = max(1000, round(cores * PERIOD_US))
        if version == 2:
            settings = {"cpu.max": f"{quota} {PERIOD_US}"}
        else:
            settings = {"cpu.cfs_period_us": str(PERIOD_US), "cpu.cfs_quota_us": str(quota)}
        version, path = cgroup.make(CONTROLLER, V1_FILE, name, settings)
        return cls(path, version, cores)

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


def available() -> str | None:
    """None when a budget can be set here, else the reason it cannot."""
    return cgroup.unavailable(CONTROLLER, V1_FILE)
