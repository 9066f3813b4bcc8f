"""The threaded server: one thread per connection, blocking reads.

The main thread accepts TCP connections and starts one thread per connection
(:class:`~threaded_server.connection.Connection`). A connection's thread feeds
each text frame to the shared :class:`~common.ChatCore` under ``chat_lock``
and, still holding it (so every member gets a room's messages in seq order),
sends the outcome to every target with non-blocking sends. Bytes a socket does
not take at once wait in its outbox for the
:class:`~threaded_server.drainer.Drainer` thread.

Locks, in the only order they are ever taken:

* ``ChatServer.chat_lock`` guards the chat core (rooms, seqs, sessions) and is
  held while an outcome's payloads are sent, without blocking, to their targets;
* ``Connection.lock`` guards one connection's protocol state and outbox.

Shutdown (SIGTERM/SIGINT): stop accepting, send 1001 to every client, wait
for the connection threads up to ``shutdown_timeout``, then drop the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

from common import ChatCore, metrics
from common.capacity import socket_limit
from common.chat import DisconnectReason, Outcome, Session
from common.config import ServerConfig
from threaded_server.broker import RedisBroker
from threaded_server.connection import Connection, text_frame
from threaded_server.drainer import Drainer

logger = logging.getLogger("twinchat.threaded")

# Connections still in their opening handshake are not sessions yet; this many
# may wait beyond --max-connections before new sockets are refused outright.
HANDSHAKE_SLACK = 64
ACCEPT_RETRY_DELAY = 0.1
UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 35\r\nConnection: close\r\n\r\nserver at capacity, try again later"
)


class ChatServer:
    """The threaded twinchat server. Run it with :meth:`run` (blocks until a signal)."""

    implementation = "threaded"

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        shared = config.broker != "memory"
        self.core = ChatCore(self.implementation, config.limits, shared=shared)
        self.chat_lock = threading.Lock()
        self.broker = (
            RedisBroker(config.broker, self.core, self.apply, self.chat_lock) if shared else None
        )
        self.drainer = Drainer()
        self.extensions = (
            [ServerPerMessageDeflateFactory()] if config.compression == "deflate" else None
        )
        self._connections_lock = threading.Lock()
        self._connections: dict[Connection, threading.Thread] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._shutting_down = False
        self._listener: socket.socket | None = None
        self._metrics_server = None
        self._socket_limit = min(config.max_connections + HANDSHAKE_SLACK, socket_limit())
        # One fd kept in reserve, given up at EMFILE to accept and refuse a client.
        self._spare_fd: int | None = None
        self._last_accept_warning = 0.0

    # Lifecycle

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        self.start()
        try:
            self.serve_forever()
        finally:
            self.shutdown()

    def start(self) -> None:
        """Listen on the chat port, start the drainer and the metrics server."""
        cfg = self.config
        threading.stack_size(cfg.thread_stack_kib * 1024)
        self._listener = socket.create_server((cfg.host, cfg.port), backlog=1024, reuse_port=False)
        self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        self.drainer.start()
        if self.broker is not None:
            self.broker.start()
        served = metrics.start(
            self.implementation,
            "threads",
            host=cfg.host,
            port=cfg.metrics_port,
            connections=lambda: self.core.connections,
            rooms=lambda: self.core.active_rooms,
        )
        self._metrics_server = served[0] if served else None
        logger.info(
            "listening on ws://%s:%d/ws (stack %d KiB, max %d connections)",
            cfg.host, cfg.port, cfg.thread_stack_kib, cfg.max_connections,
        )  # fmt: skip

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return. Safe from a signal handler; idempotent."""
        self._stopping.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def serve_forever(self) -> None:
        """Accept connections until :meth:`stop`; each gets its own thread."""
        assert self._listener is not None
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping.is_set():
            if not poller.poll(1000):
                continue
            if self._stopping.is_set():
                break
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._refuse_without_fds(exc)
                    continue
                raise
            # Small frames must not wait for Nagle (asyncio sets this by default too).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._start_connection(sock, address)

    def _refuse_without_fds(self, exc: OSError) -> None:
        """Out of fds: free the spare one to accept the client and refuse it with 503.

        Without this the client would wait in the listen backlog until its own
        timeout, and accept() would fail again at every turn of the loop.
        """
        now = time.monotonic()
        if now - self._last_accept_warning > 10:
            self._last_accept_warning = now
            logger.warning("accept failed: %s; refusing new connections", exc.strerror)
        if self._spare_fd is None:
            self._stopping.wait(ACCEPT_RETRY_DELAY)
            return
        os.close(self._spare_fd)
        self._spare_fd = None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            self._stopping.wait(ACCEPT_RETRY_DELAY)
        else:
            self._refuse(sock, "overload")
        finally:
            try:
                self._spare_fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass

    def shutdown(self) -> None:
        """Close every client with 1001 and wait for them, at most shutdown_timeout. Idempotent."""
        if self._shutting_down:
            return
        self._shutting_down = True
        deadline = time.monotonic() + self.config.shutdown_timeout
        if self._listener is not None:
            self._listener.close()
        with self._connections_lock:
            connections = dict(self._connections)
        logger.info("shutting down: closing %d connections", len(connections))
        for connection in connections:
            connection.close(1001, "server shutting down", DisconnectReason.SHUTDOWN)
        # Leave a little of the bound for dropping whoever did not answer.
        grace = deadline - 0.5
        for thread in connections.values():
            thread.join(max(0.0, grace - time.monotonic()))
        for connection, thread in connections.items():
            if thread.is_alive():
                connection.abort()
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.broker is not None:
            self.broker.stop()
        self.drainer.stop()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self._wake_r.close()
        self._wake_w.close()

    # Connections

    def _start_connection(self, sock: socket.socket, address: tuple) -> None:
        with self._connections_lock:
            crowded = len(self._connections) >= self._socket_limit
        if crowded:
            self._refuse(sock, "overload")
            return
        connection = Connection(self, sock, address)
        thread = threading.Thread(target=connection.run, name=f"conn-{address[1]}", daemon=True)
        with self._connections_lock:
            self._connections[connection] = thread
        try:
            thread.start()
        except RuntimeError:  # can't start new thread: at the thread limit
            with self._connections_lock:
                del self._connections[connection]
            self._refuse(sock, "overload")

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        """Answer 503 without reading the request, from the accept thread."""
        metrics.rejected(reason)
        try:
            sock.send(UNAVAILABLE, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def at_capacity(self) -> bool:
        return self.core.connections >= self.config.max_connections

    def opened(self, connection: Connection) -> Session:
        """A handshake completed: create the session."""
        with self.chat_lock:
            session = self.core.open(connection)
        metrics.CONNECTIONS_OPENED.inc()
        logger.info("open %s from %s", session.id, connection.address)
        return session

    def closed(self, connection: Connection) -> None:
        """A connection's thread is ending: leave its rooms, count why."""
        with self._connections_lock:
            self._connections.pop(connection, None)
        session = connection.session
        if session is None:
            return
        outcome = self.apply(lambda: self.core.close(session))
        if self.broker is not None:
            self.broker.handle(outcome)
        reason = connection.close_reason
        if self._shutting_down:
            reason = DisconnectReason.SHUTDOWN
        elif reason is None:
            rcvd = connection.protocol.close_rcvd
            ok = rcvd is not None and rcvd.code in (1000, 1001)
            reason = DisconnectReason.CLIENT_CLOSE if ok else DisconnectReason.ERROR
        metrics.disconnected(reason)
        logger.info("close %s: %s", session.id, reason.value)

    # Frames

    def receive(self, connection: Connection, text: str) -> None:
        """Handle a text frame from ``connection``'s thread."""
        received_at = time.perf_counter()
        session = connection.session
        assert session is not None
        outcome = self.apply(lambda: self.core.receive(session, text))
        metrics.record(outcome, received_at)
        if self.broker is not None:
            self.broker.handle(outcome)
        self._close_if_asked(connection, outcome)

    def receive_binary(self, connection: Connection) -> None:
        session = connection.session
        assert session is not None
        outcome = self.core.receive_binary(session)
        metrics.record(outcome, time.perf_counter())
        self._close_if_asked(connection, outcome)

    def apply(self, produce: Callable[[], Outcome]) -> Outcome:
        """Run ``produce()`` on the core under the chat lock and deliver its outcome.

        The payloads are sent to every target while the lock is held, so all
        members get a room's messages in seq order. The sends never block
        (what a socket does not take waits for the drainer), so the lock is
        never held while waiting on a client; the GIL serialises this Python
        work anyway. Encoded once per payload, not once per member.
        """
        compressing = self.extensions is not None
        with self.chat_lock:
            outcome = produce()
            for targets, payload in outcome.sends:
                frame = None if compressing else text_frame(payload)
                for session in targets:
                    session.connection.send_text(payload, frame)
        for session, close in outcome.closes:
            session.connection.close(close.code, close.text, close.reason)
        return outcome

    @staticmethod
    def _close_if_asked(connection: Connection, outcome: Outcome) -> None:
        if outcome.close is not None:
            close = outcome.close
            connection.close(close.code, close.text, close.reason)
