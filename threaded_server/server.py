"""The threaded server: one thread per connection, blocking reads.

Every connection runs :meth:`ChatServer.handler` in a thread of its own.
The handler feeds each message to the shared :class:`~common.ChatCore` and
hands the outcome to :meth:`ChatServer.deliver`, which sends each payload to
every target without blocking: the frame is encoded once, and what a socket
does not take at once waits in its outbox for the one drainer thread, so a
slow client never stalls its room. A client whose outbox passes
``max_backlog_bytes`` is cut off as a slow consumer.

``chat_lock`` guards :class:`~common.ChatCore`: a connection's thread holds
it across ``receive`` and ``deliver``, so one message's outcome is sent whole
before the next message is handled, and every member gets a room's messages
in seq order. Locks, in the only order they are ever taken: ``chat_lock``,
then a connection's own lock (its protocol state and outbox).
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

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from blocking import screen
from common import metrics
from common.capacity import socket_limit
from common.chat import Outcome, Session
from common.config import ServerConfig
from common.http import HttpReply, answer, refused_upgrade, unavailable
from common.reasons import DisconnectReason, DropReason, RejectReason, disconnect_reason
from common.screening import PendingScreen
from threaded_server.broker import plug
from threaded_server.connection import SEND_FLAGS, Connection, text_frame
from threaded_server.drainer import Drainer
from threaded_server.metrics_http import serve_metrics

logger = logging.getLogger("twinchat.threaded")

ACCEPT_RETRY_DELAY = 0.1
# A socket refused from the accept thread gets its 503 once the client's request has
# arrived (or after REFUSED_WAIT s): answering first races a client still sending, and
# closing with the request unread resets the connection. At most REFUSED_HELD wait.
REFUSED_WAIT = 1.0
REFUSED_HELD = 1000


class ChatServer:
    """The threaded twinchat server. Run it with :meth:`run` (blocks until a signal)."""

    implementation = "threaded"

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.chat_lock = threading.Lock()
        self.core, self.broker = plug(config, self.implementation, self.deliver, self.chat_lock)
        # Why a connection we closed ended, for chat_disconnects_total.
        self._close_reasons: dict[Connection, DisconnectReason] = {}
        self._shutting_down = False
        self._stopping = threading.Event()
        self._socket_limit = socket_limit()
        self.drainer = Drainer()
        self.extensions = (
            [ServerPerMessageDeflateFactory()] if config.compression == "deflate" else None
        )
        self._connections_lock = threading.Lock()
        self._connections: dict[Connection, threading.Thread] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener: socket.socket | None = None
        self._metrics_server = None
        # One fd kept in reserve, given up at EMFILE to accept and refuse a client.
        self._spare_fd: int | None = None
        self._last_accept_warning = 0.0
        self._poller = select.poll()
        self._refused: dict[int, tuple[float, socket.socket]] = {}  # fd: (answer by, socket)

    # Lifecycle

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        self.start()
        self.broker.start()
        try:
            self.serve_forever()
        finally:
            self.shutdown()
            self.broker.stop()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return. Safe from a signal handler; idempotent."""
        self._stopping.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def start(self) -> None:
        """Listen on the chat port, start the drainer and the metrics server."""
        cfg = self.config
        metrics.start(
            self.implementation,
            "threads",
            host=cfg.host,
            port=0,
            connections=lambda: self.core.connections,
            rooms=lambda: self.core.active_rooms,
        )
        self._metrics_server = serve_metrics(cfg.host, cfg.metrics_port)
        threading.stack_size(cfg.thread_stack_kib * 1024)
        self._listener = socket.create_server(
            (cfg.host, cfg.port), backlog=cfg.listen_backlog, reuse_port=cfg.workers > 1
        )
        self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        self.drainer.start()
        logger.info(
            "listening on ws://%s:%d/ws (stack %d KiB, max %d connections)",
            cfg.host, cfg.port, cfg.thread_stack_kib, cfg.max_connections,
        )  # fmt: skip

    def shutdown(self) -> None:
        """Stop accepting, close every client with 1001, wait at most shutdown_timeout."""
        if self._shutting_down:
            return
        self._shutting_down = True
        deadline = time.monotonic() + self.config.shutdown_timeout
        with self._connections_lock:
            connections = dict(self._connections)
        logger.info("shutting down: closing %d connections", len(connections))
        if self._listener is not None:
            self._listener.close()
        for connection in connections:
            connection.start_close(CloseCode.GOING_AWAY, "server shutting down")
        grace = deadline - 0.5  # leave a little of the bound for dropping the rest
        for thread in connections.values():
            thread.join(max(0.0, grace - time.monotonic()))
        if any(thread.is_alive() for thread in connections.values()):
            logger.warning("shutdown timed out; dropping remaining connections")
        for connection, thread in connections.items():
            if thread.is_alive():
                connection.abort()
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        self.drainer.stop()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        self._wake_r.close()
        self._wake_w.close()

    # HTTP

    def process_request(self, connection: Connection, request: Request) -> Response | None:
        """Serve / and /healthz; refuse the handshake when full (503)."""
        reply, refused = answer(
            request.path,
            self.implementation,
            sessions=self.core.connections,
            sockets=len(self._connections),
            max_connections=self.config.max_connections,
            max_sockets=self._socket_limit,
        )
        if refused is not None:
            metrics.rejected(refused)
        return None if reply is None else _response(reply)

    def process_response(
        self, connection: Connection, request: Request, response: Response
    ) -> Response | None:
        """Count the upgrades the WebSocket layer refused (bad headers, origin)."""
        if refused_upgrade(request.path, response.status_code):
            metrics.rejected(RejectReason.HANDSHAKE)
        return None

    # Connections

    def handler(self, connection: Connection) -> None:
        """Run one connection: hand each frame to the core, deliver what it says."""
        with self.chat_lock:
            session = self.core.open(connection)
        metrics.CONNECTIONS_OPENED.inc()
        logger.info("open %s from %s", session.id, connection.remote_address)
        try:
            for frame in connection:
                if not self._handle_frame(connection, session, frame):
                    break
        except ConnectionClosed:
            pass  # why: from the close frames, below
        except Exception:
            logger.exception("connection %s failed", session.id)
            self._close_reasons[connection] = DisconnectReason.ERROR
            connection.close(CloseCode.INTERNAL_ERROR)
        finally:
            with self.chat_lock:
                outcome = self.core.close(session)
                self.deliver(outcome)
            reason = disconnect_reason(
                self._close_reasons.pop(connection, None),
                shutting_down=self._shutting_down,
                sent=connection.protocol.close_sent,
                received=connection.protocol.close_rcvd,
            )
            metrics.disconnected(reason)
            self.broker.handle(outcome)
            logger.info("close %s: %s (code %s)", session.id, reason.value, connection.close_code)

    def _handle_frame(self, connection: Connection, session: Session, frame: str | bytes) -> bool:
        """Hand one frame to the core and deliver the outcome; False once closing.

        A method of its own so that an idle connection's handler keeps no
        reference to its last frame or outcome while it waits for the next.
        """
        received_at = time.perf_counter()
        with self.chat_lock:
            if isinstance(frame, str):
                outcome = self.core.receive(session, frame)
            else:
                outcome = self.core.receive_binary(session)
            self.deliver(outcome)
        if outcome.screen is not None:
            outcome = self._screen(session, outcome.screen)
        metrics.record(outcome, received_at)
        self.broker.handle(outcome)
        if outcome.close is not None:
            self._close_reasons[connection] = outcome.close.disconnect
            connection.close(outcome.close.code, outcome.close.reason)
            return False
        return True

    def _screen(self, session: Session, pending: PendingScreen) -> Outcome:
        """Screen a say (common/screening.py) in this connection's thread, then finish it.

        The blocking call runs *outside* ``chat_lock``: while this thread waits
        for the moderation service (or runs the content filter), every other
        connection's thread goes on. Inside the lock, one slow call would
        stall every room, as it stalls the async server's loop.
        """
        verdict = screen(pending.say.text, self.config.screening)
        with self.chat_lock:
            outcome = self.core.complete_screen(session, pending, verdict)
            self.deliver(outcome)
        return outcome

    def deliver(self, outcome: Outcome) -> None:
        """Send every payload of ``outcome`` to its targets, without blocking.

        Call with ``chat_lock`` held. Each payload is framed once for all its
        targets (unless an extension such as compression frames it per
        connection).
        """
        max_backlog = self.config.limits.max_backlog_bytes
        compressing = self.extensions is not None
        for targets, payload in outcome.sends:
            frame = None if compressing else text_frame(payload)
            for session in targets:
                connection = session.connection
                connection.send_text(payload, frame)
                if connection.backlog > max_backlog:
                    self._drop_slow_consumer(connection)
        for session, close in outcome.closes:
            connection = session.connection
            self._close_reasons.setdefault(connection, close.disconnect)
            connection.start_close(close.code, close.reason)

    def _drop_slow_consumer(self, connection: Connection) -> None:
        """Cut off a client that does not read; its backlog is discarded."""
        if connection in self._close_reasons:
            return
        self._close_reasons[connection] = DisconnectReason.SLOW_CONSUMER
        metrics.dropped(DropReason.SLOW_CONSUMER)
        logger.warning("dropping slow consumer %s", connection.remote_address)
        connection.abort()

    # Accepting connections, a thread for each

    def serve_forever(self) -> None:
        """Accept connections until :meth:`stop`; each gets its own thread."""
        assert self._listener is not None
        listener = self._listener.fileno()
        self._poller.register(listener, select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)
        while not self._stopping.is_set():
            self._answer_refused(time.monotonic())
            events = self._poller.poll(100 if self._refused else 1000)
            if self._stopping.is_set():
                break
            ready = {fd for fd, _ in events}
            for fd in ready & self._refused.keys():
                self._answer(fd)
            if listener not in ready:
                continue
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
        self._answer_refused(float("inf"))

    def _start_connection(self, sock: socket.socket, address: tuple) -> None:
        """Register the connection and start its thread (refused if no thread starts)."""
        cfg = self.config
        connection = Connection(
            sock,
            address,
            self.drainer,
            origins=cfg.origins,
            extensions=self.extensions,
            max_size=cfg.limits.max_frame_bytes,
            open_timeout=cfg.open_timeout,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            close_timeout=cfg.close_timeout,
        )
        thread = threading.Thread(
            target=self._conn_handler, args=(connection,), name=f"conn-{address[1]}", daemon=True
        )
        with self._connections_lock:
            self._connections[connection] = thread
        try:
            thread.start()
        except RuntimeError as exc:  # can't start new thread: at the thread limit
            with self._connections_lock:
                del self._connections[connection]
            self._warn_at_wall(f"cannot start a thread ({exc})")
            self._refuse(sock, RejectReason.THREADS)

    def _conn_handler(self, connection: Connection) -> None:
        """A connection's thread: opening handshake, :meth:`handler`, closing; never raises."""
        try:
            if connection.handshake(self.process_request, self.process_response):
                self.handler(connection)
                connection.close()
        except Exception:
            logger.exception("connection %s failed", connection.remote_address)
        finally:
            connection.close_socket()
            with self._connections_lock:
                self._connections.pop(connection, None)

    def _warn_at_wall(self, what: str) -> None:
        """Log, at most every 10 s, that a limit refuses new connections, with the
        threads and connections held at that moment (the evidence of which wall)."""
        now = time.monotonic()
        if now - self._last_accept_warning > 10:
            self._last_accept_warning = now
            logger.warning(
                "%s with %d threads and %d connections; refusing new connections with 503",
                what, metrics.os_threads(), len(self._connections),
            )  # fmt: skip

    def _refuse(
        self, sock: socket.socket, reason: RejectReason = RejectReason.OVERLOAD, *, now=False
    ) -> None:
        """Answer 503 from the accept thread once the client's request has arrived (at
        most ``REFUSED_WAIT`` s later), or at once with ``now`` (to free the fd)."""
        metrics.rejected(reason)
        if now:
            _answer_unavailable(sock)
            return
        sock.setblocking(False)
        self._refused[sock.fileno()] = (time.monotonic() + REFUSED_WAIT, sock)
        self._poller.register(sock, select.POLLIN)
        if len(self._refused) > REFUSED_HELD:
            self._answer(next(iter(self._refused)))

    def _answer(self, fd: int) -> None:
        """Answer one waiting refused socket with 503 and close it."""
        _, sock = self._refused.pop(fd)
        self._poller.unregister(fd)
        _answer_unavailable(sock)

    def _answer_refused(self, now: float) -> None:
        """Answer the refused sockets that waited until ``now`` for their request."""
        for fd in [fd for fd, (due, _) in self._refused.items() if due <= now]:
            self._answer(fd)

    def _refuse_without_fds(self, exc: OSError) -> None:
        """Out of fds: free the spare one to accept the client and refuse it with 503.

        Without this the client would wait in the listen backlog until its own
        timeout, and accept() would fail again at every turn of the loop.
        """
        assert self._listener is not None
        self._warn_at_wall(f"accept failed: {exc.strerror}")
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
            self._refuse(sock, now=True)
        finally:
            try:
                self._spare_fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass


def _answer_unavailable(sock: socket.socket) -> None:
    """Read what the client sent (its request: closing a socket with unread data resets
    the connection, and the reset can overtake the answer), answer 503 and close."""
    try:
        sock.recv(65536, socket.MSG_DONTWAIT)
        sock.send(_response(unavailable()).serialize(), SEND_FLAGS)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _response(reply: HttpReply) -> Response:
    return Response(reply.status, reply.reason, Headers(reply.headers), reply.body)
