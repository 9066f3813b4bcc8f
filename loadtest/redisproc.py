"""A real redis-server on a free loopback port, restartable: for the tests and make compare."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from loadtest.serverproc import free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisProcess:
    """redis-server with an append-only file, so a restart keeps the rooms."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        command = [
            REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--protected-mode", "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def flush(self) -> None:
        """Forget every key (rooms, seqs, history) between two runs."""
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
