"""One client connection of the threaded server, served by its own thread.

Why the threaded server has its own WebSocket I/O instead of
``websockets.sync.server``: the library's threaded server costs 3 threads and
4 fds per connection (1,000 idle clients: 3,001 threads, 4,009 fds; it died
of EMFILE near 5,000 connections under a 20,000-fd limit), and its ``send``
holds a per-connection mutex across a blocking ``sendall``, so a fan-out
under ``chat_lock`` waits for the slowest member of the room, and one client
that stops reading stalls its room. This module keeps what the library's
Sans-I/O layer (:class:`websockets.server.ServerProtocol`) does, so the bytes
on the wire are the library's as on the asyncio server, and adds only the
I/O: 1 thread and 1 fd per connection, sends that never block, and one
:class:`~threaded_server.drainer.Drainer` thread for the bytes a socket did
not take at once. The naive version of this design is the ``bare-threaded``
reference of ``make bench`` (``loadtest/bench/refs.py``: a thread per
connection on ``ServerProtocol``, ``sendall`` under each connection's lock):
in the full run of 2026-11-25 it delivered 269k / 311k / 278k messages/s to
100 / 1,000 / 5,000 receivers, and held 19,500 idle connections at 31.6 KiB
each (docs/bench.md); it has no slow-consumer bound, so one client that
stops reading blocks its sender for good.

A :class:`Connection` offers what ``websockets.sync.server.ServerConnection``
offers, so the server's handler reads like the asyncio server's:

* iteration over the incoming messages (``str`` for text, ``bytes`` for
  binary) until the connection closes, then ``ConnectionClosedOK`` ends the
  loop and ``ConnectionClosedError`` is raised after an abnormal end;
* :meth:`Connection.send_text`, :meth:`Connection.close`,
  :attr:`Connection.close_code`, :attr:`Connection.remote_address`;
* the read loop, keepalive pings and the hand-off to the drainer, inside.

Writes come from many threads: the connection's own (replies), any thread
whose ``say`` reaches this client's rooms, and the drainer. ``self.lock``
guards the protocol object and the outbox; it is held only for memory
operations and *non-blocking* sends, never while waiting on a socket. Bytes
the kernel does not take at once stay in the outbox, in order, until the
drainer writes them; the server cuts off a client whose :attr:`backlog`
passes its bound.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.extensions.base import ServerExtensionFactory
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING, OPEN
from websockets.server import ServerProtocol

from common.keepalive import Action, Keepalive, Liveness
from common.reasons import KEEPALIVE_TIMEOUT_CODE, KEEPALIVE_TIMEOUT_REASON
from threaded_server.drainer import Drainer

logger = logging.getLogger("twinchat.threaded")

RECV_BUFFER = 65536
POLL_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
# An int: ``socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL`` is an IntFlag operation per call.
SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
NO_PING_WAIT = 3600.0  # seconds a read waits at most (keepalive off, or far off)

ProcessRequest = Callable[["Connection", Request], Response | None]
ProcessResponse = Callable[["Connection", Request, Response], Response | None]


def text_frame(payload: bytes) -> bytes:
    """Encode ``payload`` as an unmasked server text frame, once for all members."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


class Connection:
    """A client socket, its WebSocket protocol state and its outbox."""

    def __init__(
        self,
        sock: socket.socket,
        address: tuple,
        drainer: Drainer,
        *,
        # Protocol
        origins: list[str] | None = None,
        extensions: list[ServerExtensionFactory] | None = None,
        max_size: int | None = None,
        # Timeouts
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 2.0,
    ) -> None:
        self.socket = sock
        self.remote_address = address
        self.fileno = sock.fileno()
        self.drainer = drainer
        self.open_timeout = open_timeout
        self.keepalive = Keepalive(ping_interval, ping_timeout)
        self.close_timeout = close_timeout
        self.lock = threading.Lock()
        self.protocol = ServerProtocol(origins=origins, extensions=extensions, max_size=max_size)
        self.request: Request | None = None
        self.response: Response | None = None
        # Guarded by self.lock:
        self.outbox: deque[bytes] = deque()
        self.backlog = 0  # bytes in the outbox
        self.draining = False  # the drainer owns the outbox until it is empty
        # The WebSocket is open, no close was started and the socket was not
        # aborted: messages may be sent. Read on the fan-out path.
        self.sending = False
        self._aborted = False
        # Owned by the connection's thread:
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[bytes] = []
        self._fragment_opcode = Opcode.TEXT
        self._liveness = Liveness(0.0)  # reset when the WebSocket opens
        self._closing_deadline: float | None = None
        self._eof = False
        self._poller = select.poll()
        self._poller.register(self.fileno, POLL_IN)

    @property
    def close_code(self) -> int | None:
        """The close code of the connection once it is closed, else ``None``."""
        return self.protocol.close_code

    # Opening handshake (the connection's thread)

    def handshake(self, process_request: ProcessRequest, process_response: ProcessResponse) -> bool:
        """Read the HTTP request and answer it, within ``open_timeout``; True once open.

        As in websockets: ``process_request`` may answer the request itself
        (a page, a refusal); otherwise the protocol accepts or refuses the
        upgrade; ``process_response`` sees the response and may replace it.
        """
        deadline = time.monotonic() + self.open_timeout
        events: list = []
        while not events:
            if not self._read(deadline - time.monotonic()) or self._eof:
                return False  # timeout, or EOF before a full request
            events = self.protocol.events_received()
            if not events and self.protocol.close_expected():
                return False  # a malformed request: the protocol answered it
        request, *early_frames = events  # frames a client sent with its request
        assert isinstance(request, Request)
        self.request = request
        response = process_request(self, request)
        if response is None:
            response = self.protocol.accept(request)
        replaced = process_response(self, request, response)
        self.response = response if replaced is None else replaced
        with self.lock:
            self.protocol.send_response(self.response)
            self._write_protocol_data_locked()
        if self.protocol.state is not OPEN:
            return False
        for frame in early_frames:
            self._handle_frame(frame)
        self._liveness = Liveness(time.monotonic())
        return True

    # Receiving (the connection's thread)

    def __iter__(self) -> Iterator[str | bytes]:
        """Yield incoming messages until the connection closes.

        Ends after a normal closure; raises
        :exc:`~websockets.exceptions.ConnectionClosedError` after an abnormal one.
        """
        try:
            while True:
                yield self.recv()
        except ConnectionClosedOK:
            return

    def recv(self) -> str | bytes:
        """Return the next message; raise ConnectionClosed once the connection is closed.

        Reads the socket, answers pings, sends keepalive pings and, once a
        close frame was sent, waits at most ``close_timeout`` for the peer's.
        """
        while not self._messages:
            if self._eof or self.protocol.eof_sent:
                raise self._closed()
            if self.protocol.close_expected():
                now = time.monotonic()
                if self._closing_deadline is None:
                    self._closing_deadline = now + self.close_timeout
                timeout = self._closing_deadline - now
                if timeout <= 0:
                    raise self._closed()
            else:
                timeout = self._keepalive()
            if self._read(timeout):
                for event in self.protocol.events_received():
                    self._handle_frame(event)
        return self._messages.popleft()

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Perform the closing handshake, from the connection's thread.

        Sends a close frame, then reads (discarding messages) until the peer's
        close frame, EOF or ``close_timeout``. Idempotent.
        """
        self.start_close(code, reason)
        try:
            while True:
                self.recv()
        except ConnectionClosed:
            pass

    # Called from any thread

    def send_text(self, payload: bytes, frame: bytes | None = None) -> None:
        """Send a text message now, without blocking (pre-encoded ``frame`` when given).

        Called with the server's chat lock held, so that every member gets a
        room's messages in seq order. What the kernel does not take at once
        waits in the outbox for the drainer (and counts in :attr:`backlog`);
        nothing here waits on the socket. Dropped when the connection is not
        open or was aborted.
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
                return
            # The outbox is empty: the fan-out hot path, one non-blocking send.
            try:
                sent = self.socket.send(frame, SEND_FLAGS)
            except BlockingIOError:
                sent = 0
            except OSError:  # the peer is gone; the reader will see it
                return
            if sent < len(frame):
                self._leave_to_drainer_locked(frame[sent:])

    def start_close(self, code: int, reason: str = "") -> None:
        """Send a close frame without waiting; the connection's thread finishes the close."""
        with self.lock:
            if self.protocol.state is OPEN:
                self.protocol.send_close(code, reason)
                self._write_protocol_data_locked()
            elif self.protocol.state is CONNECTING:
                self._shutdown_socket()

    def abort(self) -> None:
        """Drop the TCP connection now, discarding what is queued; its thread finishes."""
        with self.lock:
            self._aborted = True
            self.sending = False
            self.outbox.clear()
            self.backlog = 0
        self._shutdown_socket()

    def drain(self) -> bool:
        """Called by the drainer when the socket is writable; True when the outbox is empty."""
        with self.lock:
            self.draining = False
            self._send_outbox_locked()
            return not self.draining

    # End of the connection (the connection's thread)

    def close_socket(self) -> None:
        """Send what is still queued (at most ``close_timeout``), then close the socket."""
        with self.lock:
            self._write_protocol_data_locked()
            pending = b"".join(self.outbox)
            self.outbox.clear()
            self.backlog = 0
            self.sending = False
        if pending and not self._aborted:
            try:
                self.socket.settimeout(self.close_timeout)
                self.socket.sendall(pending)
            except OSError:
                pass
        self.drainer.forget(self)
        try:
            self.socket.close()
        except OSError:
            pass

    # Internals of the connection's thread

    def _read(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for bytes and feed them to the protocol.

        Returns False on timeout. On EOF or a socket error the protocol sees
        EOF and ``self._eof`` is set.
        """
        if timeout <= 0 or not self._poller.poll(timeout * 1000):
            return False
        try:
            data = self.socket.recv(RECV_BUFFER)
        except OSError:
            data = b""
        with self.lock:
            if data:
                self._liveness.heard(time.monotonic())
                self.protocol.receive_data(data)
            else:
                self._eof = True
                self.protocol.receive_eof()
            self._write_protocol_data_locked()
        return True

    def _handle_frame(self, frame: Frame) -> None:
        """Reassemble messages from frames."""
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragment_opcode, self._fragments = opcode, [bytes(frame.data)]
                return
            data = bytes(frame.data)
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            opcode, data = self._fragment_opcode, b"".join(self._fragments)
            self._fragments = []
        else:
            return  # PING (answered by the protocol), PONG and CLOSE
        if opcode is Opcode.BINARY:
            self._messages.append(data)
            return
        try:
            self._messages.append(data.decode())
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8")

    def _keepalive(self) -> float:
        """Ping a silent peer, give up on one that missed its pong (common/keepalive.py);
        return how long to read."""
        now = time.monotonic()
        action = self.keepalive.check(self._liveness, now)
        if action is Action.PING:
            with self.lock:
                self.protocol.send_ping(os.urandom(4))
                self._write_protocol_data_locked()
        elif action is Action.GIVE_UP:
            self._fail(KEEPALIVE_TIMEOUT_CODE, KEEPALIVE_TIMEOUT_REASON)
            return 0.0
        return min(self.keepalive.wait(self._liveness, now), NO_PING_WAIT)

    def _fail(self, code: int, reason: str) -> None:
        with self.lock:
            self.protocol.fail(code, reason)
            self._write_protocol_data_locked()

    def _closed(self) -> ConnectionClosed:
        """The exception that ends :meth:`recv`: nothing more is read, so the protocol
        takes EOF and its state becomes CLOSED, with the close frames both ways."""
        with self.lock:
            self.protocol.receive_eof()
            self._write_protocol_data_locked()
        return self.protocol.close_exc

    # Internals (self.lock held)

    def _write_protocol_data_locked(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.outbox.append(chunk)
                self.backlog += len(chunk)
        if not self.draining:
            self._send_outbox_locked()
        self.sending = self.protocol.state is OPEN and not self._aborted

    def _send_outbox_locked(self) -> None:
        if not self.outbox:
            return
        data = self.outbox[0] if len(self.outbox) == 1 else b"".join(self.outbox)
        try:
            sent = self.socket.send(data, SEND_FLAGS)
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
        self.drainer.watch(self)

    def _shutdown_socket(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
