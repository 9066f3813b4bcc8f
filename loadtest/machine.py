"""Describe the machine a run happened on: hardware, limits, load, versions and commit.

Every runner's report states where its figures were measured from this one
description (compare's summary.json and report, bench's results).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

from loadtest.taskcap import tasks_in_use

PACKAGES = (
    "websockets", "uvloop", "prometheus-client", "orjson", "locust", "gevent",
    "psutil", "matplotlib",
)  # fmt: skip


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root, capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def uncommitted(root: Path) -> list[str] | None:
    """Files of the servers and load tests that differ from the commit (what really ran)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "common", "threaded_server",
             "async_server", "loadtest"],
            cwd=root, capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.stdout.splitlines() if line.strip()]


def describe(pinning: dict | None, root: Path) -> dict:
    """The machine now, with ``pinning`` (how the run placed its processes) and the
    commit of the checkout at ``root``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "kernel": platform.release(),
        "distribution": _os_release(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": psutil.virtual_memory().total,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "pinning": pinning,
        "fd_limit": {"soft": soft, "hard": hard},
        "pid_max": _int(_read("/proc/sys/kernel/pid_max")),
        "threads_max": _int(_read("/proc/sys/kernel/threads-max")),
        "max_map_count": _int(_read("/proc/sys/vm/max_map_count")),
        "ephemeral_ports": _read("/proc/sys/net/ipv4/ip_local_port_range"),
        "somaxconn": _int(_read("/proc/sys/net/core/somaxconn")),
        "tcp_tw_reuse": _int(_read("/proc/sys/net/ipv4/tcp_tw_reuse")),
        "tasks_at_start": tasks_in_use(),
        "load_average_at_start": list(load) if load else None,
        "git_commit": git_commit(root),
        "uncommitted_files": uncommitted(root),
    }


def one_line() -> str:
    """The machine in one line, as the benchmarks' JSON and Markdown print it."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def _os_release() -> str | None:
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
