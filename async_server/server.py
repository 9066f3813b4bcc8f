"""The asyncio server: one event loop, one task per connection.

Every connection runs :meth:`ChatServer.handler` as a task on one event loop
(uvloop by default). The handler feeds each text frame to the shared
:class:`~common.ChatCore` and hands the outcome to :meth:`ChatServer.deliver`,
which writes each payload to every target with ``websockets.broadcast()``:
the payload is encoded once and pushed into each connection's write buffer
without awaiting anyone, so a slow client never stalls its room. A client
whose write buffer passes ``max_backlog_bytes`` is cut off as a slow consumer.

No lock guards :class:`~common.ChatCore`: only the loop's thread touches it,
and ``deliver`` never awaits, so one frame's outcome is written whole before
the next frame is handled.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from async_server.broker import plug
from async_server.connection import ChatConnection, keep_alive
from async_server.metrics_http import serve_metrics
from blocking import screen
from common import metrics
from common.capacity import socket_limit
from common.chat import Outcome, Session
from common.config import ServerConfig
from common.http import HttpReply, answer, refused_upgrade
from common.keepalive import Keepalive
from common.reasons import (
    KEEPALIVE_TIMEOUT_CODE,
    KEEPALIVE_TIMEOUT_REASON,
    DisconnectReason,
    DropReason,
    RejectReason,
    disconnect_reason,
)
from common.screening import PendingScreen

logger = logging.getLogger("twinchat.async")

LOOP_LAG_INTERVAL = 0.25


class ChatServer:
    """The asyncio twinchat server. Run it with :meth:`run` (blocks until a signal)."""

    implementation = "async"

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.core, self.broker = plug(config, self.implementation, self.deliver)
        # Why a connection we closed ended, for chat_disconnects_total.
        self._close_reasons: dict[ServerConnection, DisconnectReason] = {}
        self._shutting_down = False
        self._stop: asyncio.Future[None] | None = None
        self._closing: set[asyncio.Future] = set()  # close handshakes we started
        self._socket_limit = socket_limit()

    # Lifecycle

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        async with await self.start() as server:
            metrics_server = await serve_metrics(self.config.host, self.config.metrics_port)
            tasks = [asyncio.create_task(self._measure_loop_lag())]
            keepalive = Keepalive(self.config.ping_interval, self.config.ping_timeout)
            if keepalive.enabled:
                tasks.append(asyncio.create_task(keep_alive(server, keepalive, self._give_up)))
            await self.broker.start()
            await self._stop
            await self.shutdown(server)
            for task in tasks:
                task.cancel()
            await self.broker.stop()
            if metrics_server is not None:
                metrics_server.close()

    def stop(self) -> None:
        """Ask :meth:`run` to shut down. Idempotent."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    async def start(self) -> Server:
        """Listen on the chat port and return the websockets server."""
        cfg = self.config
        metrics.start(
            self.implementation,
            cfg.loop,
            host=cfg.host,
            port=0,
            connections=lambda: self.core.connections,
            rooms=lambda: self.core.active_rooms,
        )
        server = await serve(
            self.handler,
            cfg.host,
            cfg.port,
            process_request=self.process_request,
            process_response=self.process_response,
            origins=cfg.origins,
            compression=cfg.compression,
            max_size=cfg.limits.max_frame_bytes,
            open_timeout=cfg.open_timeout,
            ping_interval=None,  # one keepalive task for all connections (run)
            close_timeout=cfg.close_timeout,
            create_connection=ChatConnection,
            server_header=None,
            reuse_address=True,
            reuse_port=cfg.workers > 1,
            backlog=cfg.listen_backlog,
        )
        logger.info(
            "listening on ws://%s:%d/ws (loop=%s, max %d connections)",
            cfg.host, cfg.port, cfg.loop, cfg.max_connections,
        )  # fmt: skip
        return server

    async def shutdown(self, server: Server) -> None:
        """Stop accepting, close every client with 1001, wait at most shutdown_timeout."""
        self._shutting_down = True
        logger.info("shutting down: closing %d connections", self.core.connections)
        server.close(close_connections=True, reason="server shutting down")
        try:
            await asyncio.wait_for(server.wait_closed(), self.config.shutdown_timeout)
        except TimeoutError:
            remaining = list(server.all_connections)
            logger.warning("shutdown timed out; dropping %d remaining connections", len(remaining))
            for connection in remaining:
                connection.transport.abort()

    # HTTP

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Serve / and /healthz; refuse the handshake when full (503)."""
        reply, refused = answer(
            request.path,
            self.implementation,
            sessions=self.core.connections,
            sockets=len(connection.server.all_connections),
            max_connections=self.config.max_connections,
            max_sockets=self._socket_limit,
        )
        if refused is not None:
            metrics.rejected(refused)
        return None if reply is None else _response(reply)

    def process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        """Count the upgrades the WebSocket layer refused (bad headers, origin)."""
        if refused_upgrade(request.path, response.status_code):
            metrics.rejected(RejectReason.HANDSHAKE)
        return None

    # Connections

    async def handler(self, connection: ServerConnection) -> None:
        """Run one connection: hand each frame to the core, deliver what it says."""
        session = self.core.open(connection)
        metrics.CONNECTIONS_OPENED.inc()
        logger.info("open %s from %s", session.id, connection.remote_address)
        try:
            async for frame in connection:
                if not await self._handle_frame(connection, session, frame):
                    break
        except ConnectionClosed:
            pass  # why: from the close frames, below
        except Exception:
            logger.exception("connection %s failed", session.id)
            self._close_reasons[connection] = DisconnectReason.ERROR
            await connection.close(CloseCode.INTERNAL_ERROR)
        finally:
            outcome = self.core.close(session)
            self.deliver(outcome)
            reason = disconnect_reason(
                self._close_reasons.pop(connection, None),
                shutting_down=self._shutting_down,
                sent=connection.protocol.close_sent,
                received=connection.protocol.close_rcvd,
            )
            metrics.disconnected(reason)
            await self.broker.handle(outcome)
            logger.info("close %s: %s (code %s)", session.id, reason.value, connection.close_code)

    async def _handle_frame(
        self, connection: ServerConnection, session: Session, frame: str | bytes
    ) -> bool:
        """Hand one frame to the core and deliver the outcome; False once closing.

        A method of its own so that an idle connection's handler keeps no
        reference to its last frame or outcome while it waits for the next.
        """
        received_at = time.perf_counter()
        if isinstance(frame, str):
            outcome = self.core.receive(session, frame)
        else:
            outcome = self.core.receive_binary(session)
        self.deliver(outcome)
        if outcome.screen is not None:
            outcome = await self._screen(session, outcome.screen)
        metrics.record(outcome, received_at)
        await self.broker.handle(outcome)
        if outcome.close is not None:
            self._close_reasons[connection] = outcome.close.disconnect
            await connection.close(outcome.close.code, outcome.close.reason)
            return False
        return True

    async def _screen(self, session: Session, pending: PendingScreen) -> Outcome:
        """Screen a say (common/screening.py), then finish it.

        ``--screen-in loop`` calls the blocking code as written, on the event
        loop: while it waits for the moderation service (or runs the content
        filter), no other connection is served. ``--screen-in thread`` moves
        the call to a worker thread (``asyncio.to_thread``, the loop's default
        executor), and the loop goes on meanwhile.
        """
        screening = self.config.screening
        if screening.screen_in == "thread":
            verdict = await asyncio.to_thread(screen, pending.say.text, screening)
        else:
            verdict = screen(pending.say.text, screening)
        outcome = self.core.complete_screen(session, pending, verdict)
        self.deliver(outcome)
        return outcome

    def deliver(self, outcome: Outcome) -> None:
        """Write every payload of ``outcome`` to its targets, without awaiting.

        ``broadcast()`` encodes each payload once for all its targets (unless
        an extension such as compression frames it per connection).
        """
        max_backlog = self.config.limits.max_backlog_bytes
        for targets, payload in outcome.sends:
            connections = [session.connection for session in targets]
            broadcast(connections, payload, text=True)
            for connection in connections:
                if connection.transport.get_write_buffer_size() > max_backlog:
                    self._drop_slow_consumer(connection)
        for session, close in outcome.closes:
            connection = session.connection
            self._close_reasons.setdefault(connection, close.disconnect)
            self._close_soon(connection, close.code, close.reason)

    def _give_up(self, connection: ChatConnection) -> None:
        """The client missed its keepalive pong: close with 1011, counted as ``timeout``."""
        self._close_soon(connection, KEEPALIVE_TIMEOUT_CODE, KEEPALIVE_TIMEOUT_REASON)

    def _close_soon(self, connection: ServerConnection, code: int, reason: str) -> None:
        """Start the closing handshake without awaiting it; its handler finishes the rest."""
        task = asyncio.ensure_future(connection.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _drop_slow_consumer(self, connection: ServerConnection) -> None:
        """Cut off a client that does not read; its backlog is discarded."""
        if connection in self._close_reasons:
            return
        self._close_reasons[connection] = DisconnectReason.SLOW_CONSUMER
        metrics.dropped(DropReason.SLOW_CONSUMER)
        logger.warning("dropping slow consumer %s", connection.remote_address)
        connection.transport.abort()

    async def _measure_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            metrics.EVENT_LOOP_LAG.observe(max(0.0, loop.time() - start - LOOP_LAG_INTERVAL))


def _response(reply: HttpReply) -> Response:
    return Response(reply.status, reply.reason, Headers(reply.headers), reply.body)
