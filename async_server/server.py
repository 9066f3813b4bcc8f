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
from websockets.http11 import Request, Response

from async_server.broker import RedisBroker
from async_server.metrics_http import serve_metrics
from common import ChatCore, metrics
from common.capacity import socket_limit
from common.chat import DisconnectReason, DropReason, Outcome, Session
from common.config import ServerConfig
from common.http import HttpReply, route, unavailable

logger = logging.getLogger("twinchat.async")

LOOP_LAG_INTERVAL = 0.25


class ChatServer:
    """The asyncio twinchat server. Run it with :meth:`run` (blocks until a signal)."""

    implementation = "async"

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        shared = config.broker != "memory"
        self.core = ChatCore(self.implementation, config.limits, shared=shared)
        self.broker = RedisBroker(config.broker, self.core, self.deliver) if shared else None
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
            lag_task = asyncio.create_task(self._measure_loop_lag())
            if self.broker is not None:
                await self.broker.start()
            await self._stop
            await self.shutdown(server)
            lag_task.cancel()
            if self.broker is not None:
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
            origins=cfg.origins,
            compression=cfg.compression,
            max_size=cfg.limits.max_frame_bytes,
            open_timeout=cfg.open_timeout,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            close_timeout=cfg.close_timeout,
            server_header=None,
            reuse_address=True,
            reuse_port=cfg.workers > 1,
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
            logger.warning("shutdown timed out; dropping remaining connections")

    # HTTP

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Serve / and /healthz; refuse the handshake at capacity (503)."""
        reply = route(request.path, self.implementation, self.core.connections)
        if reply is None:
            if len(connection.server.all_connections) >= self._socket_limit:
                metrics.rejected("overload")  # handshakes in flight near the fd limit
                reply = unavailable()
            elif self.core.connections >= self.config.max_connections:
                metrics.rejected("capacity")
                reply = unavailable()
        return None if reply is None else _response(reply)

    # Connections

    async def handler(self, ws: ServerConnection) -> None:
        """Run one connection: hand each frame to the core, deliver what it says."""
        session = self.core.open(ws)
        metrics.CONNECTIONS_OPENED.inc()
        logger.info("open %s from %s", session.id, ws.remote_address)
        reason = DisconnectReason.CLIENT_CLOSE
        try:
            async for frame in ws:
                if not await self._handle_frame(ws, session, frame):
                    break
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.reason == "keepalive ping timeout":
                reason = DisconnectReason.TIMEOUT
            elif exc.rcvd is None or exc.rcvd.code not in (1000, 1001):
                reason = DisconnectReason.ERROR
        except Exception:
            # A bug, not the client's doing: websockets closes with 1011.
            logger.exception("connection %s failed", session.id)
            reason = DisconnectReason.ERROR
        finally:
            if self._shutting_down:
                reason = DisconnectReason.SHUTDOWN
            reason = self._close_reasons.pop(ws, reason)
            outcome = self.core.close(session)
            self.deliver(outcome)
            metrics.disconnected(reason)
            if self.broker is not None:
                await self.broker.handle(outcome)
            logger.info("close %s: %s (code %s)", session.id, reason.value, ws.close_code)

    async def _handle_frame(self, ws: ServerConnection, session: Session, frame) -> bool:
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
        metrics.record(outcome, received_at)
        if self.broker is not None:
            await self.broker.handle(outcome)
        if outcome.close is not None:
            self._close_reasons[ws] = outcome.close.reason
            await ws.close(outcome.close.code, outcome.close.text)
            return False
        return True

    def deliver(self, outcome: Outcome) -> None:
        """Write every payload of ``outcome`` to its targets, without awaiting."""
        max_backlog = self.config.limits.max_backlog_bytes
        for targets, payload in outcome.sends:
            connections = [session.connection for session in targets]
            broadcast(connections, payload, text=True)
            for ws in connections:
                if ws.transport.get_write_buffer_size() > max_backlog:
                    self._drop_slow_consumer(ws)
        for session, close in outcome.closes:
            ws = session.connection
            self._close_reasons.setdefault(ws, close.reason)
            task = asyncio.ensure_future(ws.close(close.code, close.text))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _drop_slow_consumer(self, ws: ServerConnection) -> None:
        """Cut off a client that does not read; its backlog is discarded."""
        if ws in self._close_reasons:
            return
        self._close_reasons[ws] = DisconnectReason.SLOW_CONSUMER
        metrics.MESSAGES_DROPPED.labels(DropReason.SLOW_CONSUMER.value).inc()
        logger.warning("dropping slow consumer %s", ws.remote_address)
        ws.transport.abort()

    async def _measure_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            metrics.EVENT_LOOP_LAG.observe(max(0.0, loop.time() - start - LOOP_LAG_INTERVAL))


def _response(reply: HttpReply) -> Response:
    return Response(reply.status, reply.reason, Headers(reply.headers), reply.body)
