"""The drainer: one thread that finishes writes the kernel could not take at once.

Connection threads and fan-out never wait on a client's socket: they send
without blocking and leave what did not fit in the connection's outbox. The
drainer waits for those sockets to become writable and sends the rest, in
order. A client that never reads is cut off by its backlog bound or its
keepalive, never waited for.

It uses ``epoll`` with one-shot registrations: :meth:`Drainer.watch` arms a
socket from whichever thread found it full (``epoll_ctl`` is thread-safe and
a waiting ``epoll_wait`` sees the change), and the drainer re-arms only the
sockets that are still full after a write. No per-loop bookkeeping grows with
the number of watched sockets, which matters when thousands of receivers read
slower than a room speaks.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from typing import Protocol

logger = logging.getLogger("twinchat.threaded")

WRITABLE_ONCE = select.EPOLLOUT | select.EPOLLONESHOT
POLL_TIMEOUT = 0.5  # seconds; how long stop() may wait for the thread


class Drainable(Protocol):
    """What the drainer needs of a connection (``threaded_server.connection.Connection``)."""

    fileno: int
    remote_address: tuple

    def drain(self) -> bool:
        """Write what the socket takes; True when nothing is left."""


class Drainer:
    """Owns a thread that writes the outboxes of connections whose sockets were full."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._connections: dict[int, Drainable] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="drainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread. Idempotent."""
        self._stopping = True
        if self._thread.is_alive():
            self._thread.join(5)
        self._epoll.close()

    def watch(self, connection: Drainable) -> None:
        """Write ``connection``'s outbox once its socket is writable.

        Called with the connection's lock held, once per episode of a full
        socket (the connection's ``draining`` flag).
        """
        fd = connection.fileno
        if self._connections.get(fd) is connection:
            self._epoll.modify(fd, WRITABLE_ONCE)  # re-arm a one-shot registration
            return
        self._connections[fd] = connection
        try:
            self._epoll.register(fd, WRITABLE_ONCE)
        except FileExistsError:  # a closed connection's fd, reused before forget()
            self._epoll.modify(fd, WRITABLE_ONCE)

    def forget(self, connection: Drainable) -> None:
        """Stop watching ``connection``; call before closing its socket."""
        fd = connection.fileno
        if self._connections.get(fd) is connection:
            del self._connections[fd]
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def _run(self) -> None:
        while not self._stopping:
            try:
                ready = self._epoll.poll(POLL_TIMEOUT)
            except (OSError, ValueError):  # closed by stop()
                return
            for fd, _events in ready:
                connection = self._connections.get(fd)
                if connection is None:
                    continue
                try:
                    connection.drain()  # re-arms through watch() if still full
                except Exception:
                    logger.exception("drain failed for %s", connection.remote_address)
