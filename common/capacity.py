"""How many connections this process can hold, from the OS limits.

Each connection costs one file descriptor in both servers and one thread in
the threaded server. The default ``--max-connections`` is what is left of
those once a reserve is set aside for listening sockets, the metrics server,
logs and the refusals themselves (answering 503 takes an fd for a moment).
"""

from __future__ import annotations

import resource
from pathlib import Path

FD_RESERVE = 64
THREAD_RESERVE = 256


def fd_limit() -> int:
    """The soft limit on open files of this process."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def thread_limit() -> int:
    """Threads this process could still create, by the kernel's limits (Linux)."""
    limits = []
    for path in ("/proc/sys/kernel/threads-max", "/proc/sys/kernel/pid_max"):
        try:
            limits.append(int(Path(path).read_text()))
        except (OSError, ValueError):
            pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    if not limits:
        return 1 << 20
    try:
        # Fourth field of loadavg: "running/total" scheduling entities (threads).
        in_use = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        in_use = 0
    return max(0, min(limits) - in_use)


def default_max_connections(*, threads: bool) -> int:
    """The most connections a server of this model can hold: the default ``--max-connections``.

    A larger ``--max-connections`` is lowered to this, so that the server
    refuses with 503 before the kernel refuses it a file descriptor.
    """
    capacity = fd_limit() - FD_RESERVE
    if threads:
        capacity = min(capacity, thread_limit() - THREAD_RESERVE)
    return max(1, capacity)


def socket_limit() -> int:
    """Sockets (handshakes in progress included) past which new ones are refused outright."""
    return max(1, fd_limit() - FD_RESERVE // 2)
