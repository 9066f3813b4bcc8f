"""One client connection of the threaded server, run by its own thread.

The thread does blocking reads and speaks WebSocket through the websockets
library's Sans-I/O layer (:class:`websockets.server.ServerProtocol`), so the
bytes on the wire are the library's, as on the asyncio server.

Writes come from many threads: the connection's own (replies), any thread
whose ``say`` reaches this client's rooms, and the server's drainer. They all
go through :meth:`Connection.send_text` (or the protocol's own frames) and the
outbox:

* ``self.lock`` guards the protocol object and the outbox; it is held only for
  memory operations and *non-blocking* sends, never while waiting on a socket;
* bytes the kernel does not take at once stay in the outbox, in order, and the
  server's single drainer thread writes them when the socket is writable;
* once the outbox passes ``max_backlog_bytes`` the client is cut off as a
  slow consumer, so nobody ever waits for it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from websockets.datastructures import Headers
from websockets.frames import CloseCode as WsCloseCode
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING, OPEN
from websockets.server import ServerProtocol

from common import metrics
from common.chat import DisconnectReason, Session
from common.http import HttpReply, route, unavailable

if TYPE_CHECKING:
    from threaded_server.server import ChatServer

logger = logging.getLogger("twinchat.threaded")

RECV_BUFFER = 65536
POLL_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
# An int: ``socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL`` is an IntFlag operation per call.
SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)


def text_frame(payload: bytes) -> bytes:
    """Encode ``payload`` as an unmasked server text frame, once for all members."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


class Connection:
    """A client socket, its WebSocket protocol state and its outbox."""

    def __init__(self, server: ChatServer, sock: socket.socket, address: tuple) -> None:
        self.server = server
        self.config = server.config
        self.sock = sock
        self.address = address
        self.fileno = sock.fileno()
        self.lock = threading.Lock()
        self.protocol = ServerProtocol(
            origins=self.config.origins,
            extensions=server.extensions,
            max_size=self.config.limits.max_frame_bytes,
        )
        self.session: Session | None = None
        # Guarded by self.lock:
        self.outbox: deque[bytes] = deque()
        self.backlog = 0
        self.draining = False  # the drainer owns the outbox until it is empty
        self.close_reason: DisconnectReason | None = None
        # The WebSocket is open and no close was started: chat messages may be
        # sent. Kept by _write_protocol_data_locked, read on the fan-out path.
        self.sending = False
        # Owned by the connection's thread:
        self._early_frames: list[Frame] = []
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._ping_sent_at: float | None = None
        self._next_ping_at = 0.0
        self._eof = False
        self._poller = select.poll()
        self._poller.register(self.fileno, POLL_IN)

    # Thread body

    def run(self) -> None:
        """Serve the connection until it ends; never raises."""
        try:
            if self._handshake():
                self._serve()
        except Exception:
            logger.exception("connection %s failed", self.address)
            self._set_close_reason(DisconnectReason.ERROR)
        finally:
            self._finish()

    def _handshake(self) -> bool:
        """Read the HTTP request; answer it. Return True once the WebSocket is open."""
        deadline = time.monotonic() + self.config.open_timeout
        while True:
            if not self._read(deadline - time.monotonic()):
                return False  # timeout or EOF before a full request
            events = self.protocol.events_received()
            if events:
                break
            if self.protocol.close_expected():
                metrics.rejected("handshake")  # malformed request: the library answered 4xx
                return False
            if self._eof:
                return False
        request, *self._early_frames = events  # frames a client sent with its request
        assert isinstance(request, Request)
        reply = route(request.path, self.server.implementation, self.server.core.connections)
        if reply is None and self.server.at_capacity():
            metrics.rejected("capacity")
            reply = unavailable()
        if reply is not None:
            response = _response(reply)
        else:
            response = self.protocol.accept(request)
            if response.status_code != 101:
                metrics.rejected("handshake")
        with self.lock:
            self.protocol.send_response(response)
            self._write_protocol_data_locked()
        if self.protocol.state is not OPEN:
            return False
        self.session = self.server.opened(self)
        self._next_ping_at = time.monotonic() + (self.config.ping_interval or 0)
        return True

    def _serve(self) -> None:
        """The read loop: bytes in, frames to the chat core, until the connection ends."""
        closing_deadline: float | None = None
        for frame in self._early_frames:
            self._handle_frame(frame)
        self._early_frames = []
        while not self._eof and not self.protocol.eof_sent:
            if self.protocol.close_expected():
                # We sent a close frame: give the peer close_timeout to answer.
                now = time.monotonic()
                if closing_deadline is None:
                    closing_deadline = now + self.config.close_timeout
                timeout = closing_deadline - now
                if timeout <= 0:
                    return
            else:
                timeout = self._keepalive()
            if not self._read(timeout):
                continue
            for event in self.protocol.events_received():
                self._handle_frame(event)

    def _read(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for bytes and feed them to the protocol.

        Returns False on timeout. On EOF or a socket error the protocol sees
        EOF and ``self._eof`` is set.
        """
        if timeout <= 0 or not self._poller.poll(timeout * 1000):
            return False
        try:
            data = self.sock.recv(RECV_BUFFER)
        except OSError:
            data = b""
        with self.lock:
            if data:
                self.protocol.receive_data(data)
            else:
                self._eof = True
                self.protocol.receive_eof()
            self._write_protocol_data_locked()
        return True

    def _handle_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            self._ping_sent_at = None
            self._next_ping_at = time.monotonic() + (self.config.ping_interval or 0)
            return
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragment_opcode, self._fragments = opcode, [bytes(frame.data)]
                return
            data = frame.data
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            opcode, data = self._fragment_opcode, b"".join(self._fragments)
            self._fragments = []
        else:
            return  # PING (answered by the protocol) and CLOSE
        if opcode is Opcode.TEXT:
            try:
                text = bytes(data).decode()
            except UnicodeDecodeError:
                self._fail(WsCloseCode.INVALID_DATA, "invalid UTF-8", DisconnectReason.ERROR)
                return
            self.server.receive(self, text)
        else:
            self.server.receive_binary(self)

    def _keepalive(self) -> float:
        """Send a ping when one is due, fail on a missed pong; return how long to read."""
        interval, ping_timeout = self.config.ping_interval, self.config.ping_timeout
        if interval is None:
            return 3600.0
        now = time.monotonic()
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= ping_timeout:
                self._fail(
                    WsCloseCode.INTERNAL_ERROR, "keepalive ping timeout", DisconnectReason.TIMEOUT
                )
                return 0.0
            return self._ping_sent_at + ping_timeout - now
        if now >= self._next_ping_at:
            with self.lock:
                self.protocol.send_ping(os.urandom(4))
                self._write_protocol_data_locked()
            self._ping_sent_at = now if ping_timeout is not None else None
            self._next_ping_at = now + interval
            return ping_timeout or interval
        return self._next_ping_at - now

    def _finish(self) -> None:
        """Flush what is queued (bounded), close the socket, leave the rooms."""
        with self.lock:
            self._write_protocol_data_locked()
            pending = b"".join(self.outbox)
            self.outbox.clear()
            self.backlog = 0
        if pending and self.close_reason is not DisconnectReason.SLOW_CONSUMER:
            try:
                self.sock.settimeout(self.config.close_timeout)
                self.sock.sendall(pending)
            except OSError:
                pass
        self.server.drainer.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.closed(self)

    # Called from any thread

    def send_text(self, payload: bytes, frame: bytes | None) -> None:
        """Send a text message now, without blocking (pre-encoded ``frame`` when given).

        Called with the server's chat lock held, so that every member gets a
        room's messages in seq order. What the kernel does not take at once
        waits in the outbox for the drainer; nothing here ever waits on the
        socket. Dropped when the client is closing or was cut off.
        """
        with self.lock:
            if not self.sending:
                return
            if frame is None:  # an extension (compression) encodes per connection
                self.protocol.send_text(payload)
                frame = b"".join(self.protocol.data_to_send())
            if self.draining:  # queue behind what the drainer has not written yet
                self.outbox.append(frame)
                self.backlog += len(frame)
                if self.backlog > self.config.limits.max_backlog_bytes:
                    self._cut_off_locked()
                return
            # The outbox is empty: the fan-out hot path, one non-blocking send.
            try:
                sent = self.sock.send(frame, SEND_FLAGS)
            except BlockingIOError:
                sent = 0
            except OSError:  # the peer is gone; the reader will see it
                return
            if sent < len(frame):
                self._leave_to_drainer_locked(frame[sent:])

    def close(self, code: int, reason: str, why: DisconnectReason) -> None:
        """Start the closing handshake; the connection's thread finishes it."""
        self._set_close_reason(why)
        with self.lock:
            if self.protocol.state is OPEN:
                self.protocol.send_close(code, reason)
                self._write_protocol_data_locked()
            elif self.protocol.state is CONNECTING:
                self._shutdown_socket()

    def abort(self) -> None:
        """Drop the TCP connection now; the connection's thread wakes up and finishes."""
        self._shutdown_socket()

    # Internals (self.lock held where the name says so)

    def _fail(self, code: int, reason: str, why: DisconnectReason) -> None:
        self._set_close_reason(why)
        with self.lock:
            self.protocol.fail(code, reason)
            self._write_protocol_data_locked()

    def _set_close_reason(self, why: DisconnectReason) -> None:
        with self.lock:
            if self.close_reason is None:
                self.close_reason = why
            self.sending = False

    def _write_protocol_data_locked(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.outbox.append(chunk)
                self.backlog += len(chunk)
        if not self.draining:
            self._send_outbox_locked()
        self.sending = self.protocol.state is OPEN and self.close_reason is None

    def _send_outbox_locked(self) -> None:
        if not self.outbox:
            return
        data = self.outbox[0] if len(self.outbox) == 1 else b"".join(self.outbox)
        try:
            sent = self.sock.send(data, SEND_FLAGS)
        except BlockingIOError:
            sent = 0
        except OSError:  # the peer is gone; the reader will see it
            self.outbox.clear()
            self.backlog = 0
            return
        self.outbox.clear()
        if sent == len(data):
            self.backlog = 0
        else:
            self._leave_to_drainer_locked(data[sent:])

    def _leave_to_drainer_locked(self, rest: bytes) -> None:
        """The outbox is empty and the socket full: ``rest`` waits for the drainer."""
        self.outbox.append(rest)
        self.backlog = len(rest)
        self.draining = True
        self.server.drainer.watch(self)

    def drain(self) -> bool:
        """Called by the drainer when the socket is writable; True when the outbox is empty."""
        with self.lock:
            self.draining = False
            self._send_outbox_locked()
            return not self.draining

    def _cut_off_locked(self) -> None:
        if self.close_reason is None:
            self.close_reason = DisconnectReason.SLOW_CONSUMER
        self.sending = False
        metrics.MESSAGES_DROPPED.labels("slow_consumer").inc()
        logger.warning("dropping slow consumer %s", self.address)
        self.outbox.clear()
        self.backlog = 0
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _response(reply: HttpReply) -> Response:
    return Response(reply.status, reply.reason, Headers(reply.headers), reply.body)
