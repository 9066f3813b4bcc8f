"""Start a twinchat server as a subprocess on free loopback ports, and stop it.

Used by the tests, the comparison runner and the benchmarks, so that every one
of them runs the servers exactly as a user does: ``python -m threaded_server``
or ``python -m async_server`` in a fresh process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.pinning import on_cpus

KINDS = ("threaded", "async")
MODULES = {"threaded": "threaded_server", "async": "async_server"}
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1", run: int = 1) -> int:
    """Return a TCP port that was free on ``host`` a moment ago, with the ``run - 1`` after it."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port + run <= 65536 and all(is_free(host, port + i) for i in range(1, run)):
            return port
    raise RuntimeError(f"no run of {run} free ports found")


def is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``port`` on ``host`` right now: with ``SO_REUSEADDR``,
    as every server here binds (``socket.create_server``, asyncio, http.server), so a port
    whose old connections are in TIME_WAIT counts as free (after a run of 19,000
    connections, thousands of ports are, for a minute)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class ServerProcess:
    """A running server subprocess and the addresses it listens on."""

    kind: str
    host: str
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    args: list[str] = field(default_factory=list)
    workers: int = 1  # with --workers N, worker i serves metrics on metrics_port + i

    @property
    def url(self) -> str:
        """The WebSocket URL of the chat endpoint."""
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def healthz(self, timeout: float = 2.0) -> dict:
        """GET /healthz and return the decoded JSON body."""
        with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=timeout) as resp:
            return json.loads(resp.read())

    def metrics_text(self, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as resp:
            return resp.read().decode()

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until /healthz and /metrics answer, or raise RuntimeError."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} server exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                self.healthz(timeout=1.0)
                for i in range(self.workers):  # every worker is up once its metrics are
                    url = f"http://{self.host}:{self.metrics_port + i}/metrics"
                    urllib.request.urlopen(url, timeout=1.0).close()
                return
            except OSError as exc:
                last_error = exc
                time.sleep(0.05)
        raise RuntimeError(f"{self.kind} server not ready: {last_error}; {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig``, wait for exit (kill after ``timeout``) and return the exit code."""
        return stop_process(self.proc, sig, timeout)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Send ``sig`` to a running ``proc``, wait up to ``timeout`` s, then kill it;
    return its exit code. Does nothing to a process that already exited."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def start_server(
    kind: str,
    *extra_args: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    metrics_port: int | None = None,
    log_path: Path | None = None,
    cpu: int | None = None,
    env: dict[str, str] | None = None,
    preexec_fn=None,
    wait: bool = True,
) -> ServerProcess:
    """Start ``kind`` ("threaded" or "async") and wait until it serves.

    ``port`` and ``metrics_port`` default to free ports.
    ``extra_args`` are passed to the server's command line. ``cpu`` pins the
    process to that CPU with ``taskset`` when available. Output goes to
    ``log_path`` (or is discarded).
    """
    if kind not in MODULES:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {KINDS}")
    workers = int(extra_args[extra_args.index("--workers") + 1]) if "--workers" in extra_args else 1
    # Worker i of a --workers server serves metrics on metrics_port + i.
    port = port or free_port(host)
    metrics_port = metrics_port or free_port(host, run=workers)
    args = [sys.executable, "-m", MODULES[kind], "--host", host, "--port", str(port),
            "--metrics-port", str(metrics_port), *extra_args]  # fmt: skip
    command = on_cpus(args, cpu)
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=preexec_fn,
        )
    finally:
        if log_path:
            out.close()
    server = ServerProcess(kind, host, port, metrics_port, proc, log_path, list(args), workers)
    if wait:
        try:
            server.wait_ready()
        except Exception:
            server.stop(signal.SIGKILL)
            raise
    return server


@contextlib.contextmanager
def running_server(kind: str, *extra_args: str, **kwargs) -> Iterator[ServerProcess]:
    """Context manager around :func:`start_server` that always stops the server."""
    server = start_server(kind, *extra_args, **kwargs)
    try:
        yield server
    finally:
        server.stop()
