"""The drainer: one thread that finishes writes the kernel could not take at once.

Connection threads and fan-out never wait on a client's socket: they send
without blocking and leave what did not fit in the connection's outbox. The
drainer polls those sockets for writability and sends the rest, in order.
A client that never reads is cut off by its backlog bound or its keepalive,
never waited for.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from threaded_server.connection import Connection

logger = logging.getLogger("twinchat.threaded")


class Drainer:
    """Owns a thread that polls connections with a backlog for POLLOUT."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, Connection] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="drainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread. Idempotent."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()

    def watch(self, connection: Connection) -> None:
        """Write ``connection``'s outbox when its socket is writable."""
        with self._lock:
            self._watched[connection.fileno] = connection
        self._wake()

    def forget(self, connection: Connection) -> None:
        with self._lock:
            if self._watched.get(connection.fileno) is connection:
                del self._watched[connection.fileno]

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or stopped

    def _run(self) -> None:
        poller = select.poll()
        registered: set[int] = set()
        wake_fd = self._wake_r.fileno()
        poller.register(wake_fd, select.POLLIN)
        while not self._stopping:
            with self._lock:
                watched = dict(self._watched)
            for fd in registered - watched.keys():
                poller.unregister(fd)
            for fd in watched.keys() - registered:
                poller.register(fd, select.POLLOUT)
            registered = set(watched)
            for fd, _events in poller.poll(1000):
                if fd == wake_fd:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                connection = watched.get(fd)
                if connection is None:
                    continue
                try:
                    done = connection.drain()
                except Exception:
                    logger.exception("drain failed for %s", connection.address)
                    done = True
                if done:
                    self.forget(connection)
