"""A cgroup of our own for one process tree: what a CPU budget and a task cap share.

:mod:`loadtest.cpubudget` (the ``cpu`` controller) and :mod:`loadtest.taskcap`
(the ``pids`` controller) each make one group per server run, move the server
into it before it execs, read the group's files while it runs, and delete the
group afterwards. Finding the hierarchy (cgroup v2's unified one when it has the
controller, else v1's per-controller one), making and naming the group,
joining it and deleting it are written here once. Needs root; where no group can
be written, :func:`hierarchy` and :func:`make` raise :class:`Unavailable` with
the reason.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


class Unavailable(RuntimeError):
    """No cgroup with the controller can be written here (the reason is the message)."""


def hierarchy(controller: str, v1_file: str) -> tuple[int, Path]:
    """(cgroup version, directory to create groups in) for ``controller``.

    v2 when the unified hierarchy offers ``controller``; v1 when its own
    hierarchy exists (``v1_file`` is a file it must hold).
    """
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and controller in controllers.read_text().split():
        return 2, CGROUP_ROOT
    v1 = CGROUP_ROOT / controller
    if (v1 / v1_file).exists():
        return 1, v1
    raise Unavailable(f"no cgroup {controller} controller under {CGROUP_ROOT}")


def unavailable(controller: str, v1_file: str) -> str | None:
    """None when a group with ``controller`` can be made here, else the reason it cannot."""
    try:
        version, parent = hierarchy(controller, v1_file)
    except Unavailable as exc:
        return str(exc)
    if not os.access(parent, os.W_OK):
        return f"cgroup v{version} at {parent} is not writable (needs root)"
    return None


def make(controller: str, v1_file: str, name: str, settings: dict[str, str]) -> tuple[int, Path]:
    """Make the group ``name-<this pid>`` with ``controller`` and write ``settings``
    (file name: value) into it; return (version, its path).

    Groups of the same ``name`` left behind by processes that are gone are
    deleted first. Raises :class:`Unavailable` when the group cannot be written.
    """
    version, parent = hierarchy(controller, v1_file)
    _sweep(parent, name)
    path = parent / f"{name}-{os.getpid()}"
    try:
        if version == 2:  # children get the controller only if the parent hands it on
            (parent / "cgroup.subtree_control").write_text(f"+{controller}\n")
        path.mkdir(exist_ok=True)
        for file, value in settings.items():
            (path / file).write_text(f"{value}\n")
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.rmdir()
        raise Unavailable(f"cannot write {', '.join(settings)} in {path}: {exc}") from exc
    return version, path


@dataclass
class Group:
    """A group :func:`make` made: what a CPU budget and a task cap do alike."""

    path: Path
    version: int  # 1 or 2

    def enter(self) -> None:
        """Move the calling process into the group (use as ``preexec_fn``: the child joins
        before it execs)."""
        (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def remove(self, timeout: float = 5.0) -> None:
        """Delete the group once its processes have exited (waits up to ``timeout`` s; a
        group still in use after that is left, and swept by the next :func:`make`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)


def _sweep(parent: Path, name: str) -> None:
    """Delete the empty groups ``name-PID`` whose creator PID is gone."""
    for path in parent.glob(f"{name}-*"):
        creator = path.name.rsplit("-", 1)[-1]
        if creator.isdigit() and not Path(f"/proc/{creator}").exists():
            with contextlib.suppress(OSError):
                path.rmdir()
