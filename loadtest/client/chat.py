"""``ChatClient``: one twinchat connection of a Locust user, and its receive path.

Shaped like Locust's own clients (``HttpSession``, ``contrib.socketio``'s
``SocketIOClient``): the client owns the socket, reads it, keeps the seq
numbers and fires the request events; the user class only holds settings
and ``self.client``.

Request names (type ``WS``, times in milliseconds)::

    connect   TCP connect + HTTP upgrade + hello -> welcome
    join      join -> joined
    ack       say -> the sender's own copy of the message comes back
    fanout    now - sent_at of every message from another user
    ping      ping -> pong
    seq       failure only: seq gap (SeqGap) or duplicate / out of order (SeqDuplicate)
    close     failure only: the server closed or dropped the connection unasked
    error     failure only: the server sent {"type": "error"}
    protocol  failure only: a frame or message the client cannot understand

Sending: tasks call :meth:`ChatClient.say`, :meth:`ChatClient.ping`, ...
from their greenlet; :meth:`ChatClient.keep_pinging` hands a connection's
pings to the process's :class:`~loadtest.client.heartbeat.Heartbeat`, which
sends them from gevent's hub. Every send (tasks' frames, pings, pongs, close
frames) goes through one lock per connection, so frames never interleave on
the socket.

Receiving: after ``welcome``, the socket belongs to the process's
:class:`~loadtest.client.reactor.Reactor`, which calls :meth:`on_readable`
from gevent's hub every few milliseconds while data is there: one
``recvmsg`` (up to 64 KiB) with the kernel's arrival stamp of what it read
(:func:`~loadtest.client.transport.arrival_time`: ``time.time()`` seconds),
every complete frame parsed and handled (one whole text frame, the usual
case, goes straight to :meth:`handle_text`). Latencies (``ack``,
``fanout``, ``ping``, ``join``) end at that stamp: the time a message waited
in the socket for the next read is not in them. This path
never blocks: pongs and close frames are sent from new greenlets. Successful
``ack``/``fanout``/``ping`` samples go to
:class:`~loadtest.client.stats.BatchedStats` (merged into Locust's stats once
a second, with the same numbers); failures are fired at once.

Bad input from the server is a ``protocol`` failure (the connection is closed
with 1002 when the framing is broken), a dropped connection a ``close``
failure; neither raises into Locust.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time

import gevent
import orjson
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore

from loadtest.client import frames, transport
from loadtest.client.errors import (
    ChatLoadError,
    ConnectFailed,
    ProtocolError,
    ReplyTimeout,
    SeqDuplicate,
    SeqGap,
    ServerError,
    UnexpectedClose,
    connect_error,
)
from loadtest.client.frames import FrameError, FrameParser
from loadtest.client.reactor import reactor_for
from loadtest.client.transport import RECV_SIZE, STAMP_SPACE, arrival_time, send_all

logger = logging.getLogger(__name__)

REQUEST_TYPE = "WS"
CLOSE_FRAME = frames.close_payload(frames.CLOSE_NORMAL)

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_time = time.time


def _ping_payload() -> bytes:
    """A protocol ``ping`` carrying the time it was sent (the pong returns it)."""
    return orjson.dumps({"type": "ping", "t": _time()})


class SeqTracker:
    """Expected next seq per joined room; reports gaps and duplicates.

    ``check`` returns 0 when ``seq`` is the expected one, the number of missing
    messages (> 0) on a gap, and -1 on a duplicate or out-of-order seq. After a
    gap, tracking resumes from the seq that arrived. The receive path does the
    in-order case inline on ``expected`` and calls ``check`` for the rest.
    """

    __slots__ = ("expected",)

    def __init__(self) -> None:
        self.expected: dict[str, int] = {}

    def joined(self, room: str, last_seq: int) -> None:
        self.expected[room] = last_seq + 1

    def left(self, room: str) -> None:
        self.expected.pop(room, None)

    def check(self, room: str, seq: int) -> int:
        expected = self.expected.get(room)
        if expected is None:  # not (or no longer) joined: nothing to check
            return 0
        if seq == expected:
            self.expected[room] = seq + 1
            return 0
        if seq > expected:
            self.expected[room] = seq + 1
            return seq - expected
        return -1


class ChatClient:
    """One chat connection (``ws://`` only) for one Locust user.

    ``environment`` is the Locust environment (its request event and stats);
    ``url`` the ``ws://`` URL of the chat endpoint (None: every connect fails
    with "no host"); ``name`` the chat name sent in ``hello``; ``timeout`` bounds connect,
    ``welcome``, ``joined`` and each send; ``close_timeout`` bounds the wait
    for the server's close frame in :meth:`close`.

    Methods are called from the user's greenlet; none raises for a network or
    protocol problem: each records a failure and returns False (or does
    nothing), and the next :meth:`connect` starts over.
    """

    def __init__(
        self,
        environment,
        url: str | None,
        name: str,
        *,
        timeout: float = 10.0,
        close_timeout: float = 2.0,
    ) -> None:
        self.environment = environment
        self.url = url
        self.name = name
        self.timeout = timeout
        self.close_timeout = close_timeout
        self.seq = SeqTracker()
        self._fire = environment.events.request.fire
        self._sock: socket.socket | None = None
        self._reactor = reactor_for(environment, REQUEST_TYPE)
        self._parser = FrameParser()
        self._send_lock = Semaphore()
        self._heartbeat_sock: socket.socket | None = None  # the connection keep_pinging covers
        self._closing = False
        self._closed = Event()
        self._join_waiter: AsyncResult | None = None
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        # The process's batched stats, and the series of the batched names.
        self._stats = stats = self._reactor.stats
        self._ack = stats.get("ack")
        self._fanout = stats.get("fanout")
        self._ping = stats.get("ping")

    @property
    def connected(self) -> bool:
        """Whether the connection is open (hello answered, not closed or lost)."""
        return self._sock is not None and not self._closing

    # -- operations ---------------------------------------------------------------

    def connect(self) -> bool:
        """Open the WebSocket, send ``hello``, wait for ``welcome``; fires ``connect``.

        Closes the current connection first, if any.
        """
        self.close()
        start = time.perf_counter()
        sock = None
        try:
            with gevent.Timeout(self.timeout, ReplyTimeout("connect timed out")):
                if not self.url:
                    raise ConnectFailed("no host: pass -H ws://HOST:PORT/ws")
                sock = transport.open_socket(self.url, self.timeout)
                rest = transport.handshake(sock, self.url, self.timeout)
                parser = FrameParser()
                send_all(
                    sock,
                    frames.client_frame(
                        frames.OP_TEXT, orjson.dumps({"type": "hello", "name": self.name})
                    ),
                    self.timeout,
                )
                pending = self._await_welcome(sock, parser, rest)
        except Exception as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, ReplyTimeout):
                exc = ReplyTimeout("connect timed out")
            self._fail("connect", connect_error(exc), (time.perf_counter() - start) * 1000.0)
            return False
        except BaseException:  # GreenletExit while connecting: leave no socket behind
            if sock is not None:
                sock.close()
            raise
        elapsed = (time.perf_counter() - start) * 1000.0
        self._attach(sock, parser)
        self._fire(
            request_type=REQUEST_TYPE,
            name="connect",
            response_time=elapsed,
            response_length=0,
            exception=None,
        )
        if pending:
            self.handle_frames(pending, _time())
        return True

    def join(self, room: str) -> bool:
        """Join ``room`` and wait for ``joined`` (which sets the seq baseline); fires ``join``."""
        if not self.connected:
            return False
        waiter = self._join_waiter = AsyncResult()  # gets (reply or error, time it arrived)
        start = _time()
        reply: dict | BaseException
        try:
            if not self._send_text(orjson.dumps({"type": "join", "room": room})):
                reply, arrived = UnexpectedClose("connection closed while joining"), _time()
            else:
                reply, arrived = waiter.get(timeout=self.timeout)
        except gevent.Timeout:
            reply, arrived = ReplyTimeout("no joined reply in time"), _time()
        finally:
            self._join_waiter = None
        elapsed = max(0.0, arrived - start) * 1000.0
        if isinstance(reply, BaseException):
            self._fail("join", reply, elapsed)
            return False
        if reply.get("type") != "joined":
            self._fail("join", ServerError(f"join refused: {reply.get('code')}"), elapsed)
            return False
        self._fire(
            request_type=REQUEST_TYPE,
            name="join",
            response_time=elapsed,
            response_length=0,
            exception=None,
        )
        return True

    def ensure_joined(self, room: str) -> bool:
        """Connect and join ``room`` unless connected; True when ready to talk.

        A connection that cannot join is closed: a user never stays connected
        outside its room, and retries at its next task.
        """
        if self.connected:
            return True
        if not self.connect():
            return False
        if self.join(room):
            return True
        self.close()
        return False

    def say(self, room: str, text: str) -> bool:
        """Send one message stamped with ``sent_at``; its ack and fanout are measured when
        the copies arrive."""
        if not self.connected:
            return False
        return self._send_text(
            orjson.dumps({"type": "say", "room": room, "text": text, "sent_at": _time()})
        )

    def ping(self) -> bool:
        """Send a protocol ``ping``; the ``pong`` is measured as ``ping``."""
        if not self.connected:
            return False
        return self._send_text(_ping_payload())

    def keep_pinging(self, every: tuple[float, float]) -> None:
        """Until this connection ends, send a ``ping`` every ``random.uniform(*every)``
        seconds from the process's heartbeat, not from the caller's greenlet (which is then
        free to sleep: :meth:`wait_closed`). Does nothing when not connected, or when this
        connection is already covered."""
        sock = self._sock
        if sock is None or self._closing or self._heartbeat_sock is sock:
            return
        self._heartbeat_sock = sock
        self._reactor.heartbeat.keep_pinging(self, sock, every)

    def ping_from_hub(self, connection: object) -> bool:
        """The heartbeat's ping (see :class:`~loadtest.client.heartbeat.Heartbeat`): sent
        on ``connection`` unless it has ended (then False). Never blocks."""
        sock = self._sock
        if sock is None or sock is not connection or self._closing:
            return False
        self._send_later(sock, frames.client_frame(frames.OP_TEXT, _ping_payload()))
        return True

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the open connection ends (lost, or closed by another greenlet), at
        most ``timeout`` s (None: no limit). True if there was one and it ended."""
        if not self.connected:
            return False
        return self._closed.wait(timeout)

    def close(self) -> None:
        """Close cleanly: close frame, wait (up to ``close_timeout``) for the server's
        close frame or end of stream, then drop the socket. Never raises."""
        sock = self._sock
        if sock is None:
            return
        try:
            if not self._closing:
                self._closing = True
                self._send_close(sock)
            self._closed.wait(self.close_timeout)
        finally:
            self._teardown()

    # -- sending --------------------------------------------------------------------

    def _send_close(self, sock: socket.socket) -> None:
        """Send our close frame, waiting at most ``close_timeout`` in all."""
        if not self._send_lock.acquire(timeout=self.close_timeout):
            return  # a send is stuck: give up on a clean close
        try:
            if self._sock is sock:
                frame = frames.client_frame(frames.OP_CLOSE, CLOSE_FRAME)
                send_all(sock, frame, self.close_timeout)
        except (OSError, ChatLoadError):
            pass
        finally:
            self._send_lock.release()

    def _send_text(self, payload: bytes) -> bool:
        """Send one text frame; on failure record ``close`` and drop the connection."""
        data = frames.client_frame(frames.OP_TEXT, payload)
        sock = self._sock
        try:
            with self._send_lock:
                if self._sock is not sock or sock is None:
                    return False
                send_all(sock, data, self.timeout)
            return True
        except (OSError, ChatLoadError) as exc:
            if self._sock is sock and not self._closing:
                kind = "send timed out" if isinstance(exc, ReplyTimeout) else "connection lost"
                self._fail("close", UnexpectedClose(f"send failed: {kind}"))
                self._teardown()
            return False

    def _send_later(self, sock: socket.socket, data: bytes, then_teardown: bool = False) -> None:
        """Send ``data`` from the receive path, which must not wait for the lock.

        The usual case (a pong, with no task sending) goes out at once: the lock is free
        and the kernel takes the whole frame. Otherwise a new greenlet sends it, or the
        rest of it, holding the lock until done so that no other frame cuts in.
        """
        if not then_teardown and self._send_lock.acquire(blocking=False):
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:  # the receive path sees the connection end and reports it
                self._send_lock.release()
                return
            if sent == len(data):
                self._send_lock.release()
            else:
                gevent.spawn(self._finish_send, sock, data[sent:])
            return
        gevent.spawn(self._send_quietly, sock, data, then_teardown)

    def _finish_send(self, sock: socket.socket, rest: bytes) -> None:
        """Send the rest of a frame whose start went out; the caller holds the send lock."""
        try:
            send_all(sock, rest, self.timeout)
        except (OSError, ChatLoadError, gevent.Timeout):
            pass  # the receive path sees the connection end and reports it
        finally:
            self._send_lock.release()

    def _send_quietly(self, sock: socket.socket, data: bytes, then_teardown: bool) -> None:
        try:
            with self._send_lock:
                if self._sock is sock:
                    send_all(sock, data, self.timeout)
        except (OSError, ChatLoadError, gevent.Timeout):
            pass  # the receive path sees the connection end and reports it
        finally:
            if then_teardown and self._sock is sock:
                self._teardown()

    # -- connection lifecycle ------------------------------------------------------------

    def _await_welcome(self, sock: socket.socket, parser: FrameParser, data: bytes) -> list:
        """Read frames until ``welcome``; return the frames that came after it."""
        while True:
            if data:
                try:
                    received = parser.feed(data)
                except FrameError as exc:
                    raise ProtocolError(f"bad frame from server: {exc.reason}") from exc
                for i, (opcode, _fin, payload) in enumerate(received):
                    if opcode == frames.OP_CLOSE:
                        code = frames.close_code(payload)
                        raise UnexpectedClose(f"server closed the connection ({code})")
                    if opcode == frames.OP_PING:
                        send_all(sock, frames.client_frame(frames.OP_PONG, payload), self.timeout)
                    elif opcode == frames.OP_TEXT:
                        try:
                            kind = orjson.loads(payload).get("type")
                        except (orjson.JSONDecodeError, AttributeError):
                            kind = None
                        if kind != "welcome":
                            raise ProtocolError(f"expected welcome, got {kind!r}")
                        return received[i + 1 :]
            data = transport.recv_some(sock, self.timeout)
            if not data:
                raise UnexpectedClose("server closed the connection (EOF)")

    def _attach(self, sock: socket.socket, parser: FrameParser) -> None:
        """Hand the open socket to the process's reactor."""
        self._sock = sock
        self._parser = parser
        self._closing = False
        self._closed = Event()
        self._fragments = []
        self.seq = SeqTracker()
        self._reactor.add(sock.fileno(), self)

    def _teardown(self) -> None:
        """Forget the socket: stop reading it, shut it down, close it once no send uses it.

        Safe from the receive path (never waits) and idempotent.
        """
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        self._closing = False
        self._closed.set()
        self._reactor.remove(sock.fileno())
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a send waiting on this socket
        waiter = self._join_waiter
        if waiter is not None and not waiter.ready():
            waiter.set((UnexpectedClose("connection closed while joining"), _time()))
        if self._send_lock.acquire(blocking=False):
            try:
                sock.close()
            finally:
                self._send_lock.release()
        else:  # a send is finishing (it fails now): close after it
            gevent.spawn(self._close_after_send, sock)

    def _close_after_send(self, sock: socket.socket) -> None:
        with self._send_lock:
            sock.close()

    def _lost(self, why: str) -> None:
        """The connection ended without our asking: record ``close`` and drop it."""
        if not self._closing:
            self._fail("close", UnexpectedClose(why))
        self._teardown()

    # -- receive path (called by the reactor, in gevent's hub) -----------------------------

    def on_readable(self) -> None:
        """Read what the socket holds and handle every complete frame. Never blocks."""
        sock = self._sock
        if sock is None:
            return
        try:
            data, ancillary, _flags, _address = sock.recvmsg(RECV_SIZE, STAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(f"connection lost ({type(exc).__name__})")
            return
        now = arrival_time(ancillary)
        if not data:
            self._lost("connection lost (EOF)")
            return
        payload = self._parser.whole_text(data)
        if payload is not None:  # the hot path: one whole message, nothing buffered
            if now >= self._stats.second_end:
                self._stats.rotate(now)
            self.handle_text(payload, now)
            return
        try:
            received = self._parser.feed(data)
        except FrameError as exc:
            self.handle_frames(exc.frames, now)
            if self._sock is sock:
                self._fail("protocol", ProtocolError(f"bad frame from server: {exc.reason}"))
                self._send_later(
                    sock,
                    frames.client_frame(frames.OP_CLOSE, frames.close_payload(exc.code)),
                    then_teardown=True,
                )
                self._closing = True
            return
        self.handle_frames(received, now)

    def on_reader_error(self, exc: Exception) -> None:
        """A bug in the receive path: record it as ``protocol`` and drop the connection."""
        self._fail("protocol", ProtocolError(f"receive path failed: {type(exc).__name__}"))
        self._teardown()

    def handle_frames(self, received: list, now: float) -> None:
        """Account for ``(opcode, fin, payload)`` frames received at ``now`` (``time.time()``)."""
        stats = self._stats
        if now >= stats.second_end:
            stats.rotate(now)
        handle_text = self.handle_text
        for opcode, fin, payload in received:
            if opcode == 1 and fin:  # the parser allows no whole text frame inside a fragmented one
                handle_text(payload, now)
            else:
                self._handle_other(opcode, fin, payload, now)

    def _handle_other(self, opcode: int, fin: bool, payload: bytes, now: float) -> None:
        if opcode in (frames.OP_TEXT, frames.OP_BINARY, frames.OP_CONT):
            if opcode != frames.OP_CONT:
                self._fragment_opcode = opcode
            self._fragments.append(payload)
            if not fin:
                return
            message, self._fragments = b"".join(self._fragments), []
            if self._fragment_opcode == frames.OP_TEXT:
                self.handle_text(message, now)
            else:
                self._fail("protocol", ProtocolError("binary frame from server"))
        elif opcode == frames.OP_PING:
            sock = self._sock
            if sock is not None:
                self._send_later(sock, frames.client_frame(frames.OP_PONG, payload))
        elif opcode == frames.OP_CLOSE:
            sock = self._sock
            if sock is None:
                return
            if self._closing:  # the server's answer to our close frame
                self._teardown()
                return
            code = frames.close_code(payload)
            self._fail("close", UnexpectedClose(f"server closed the connection ({code})"))
            self._closing = True
            reply = code if code not in (frames.CLOSE_NO_STATUS, frames.CLOSE_ABNORMAL) else 1000
            self._send_later(
                sock,
                frames.client_frame(frames.OP_CLOSE, frames.close_payload(reply)),
                then_teardown=True,
            )
        # pong frames (answers to pings we never send): nothing to do

    def handle_text(self, payload: bytes, now: float) -> None:
        """Account for one text message received at ``now`` (the per-message hot path).

        Call it through :meth:`handle_frames`, which keeps the batched stats on ``now``'s second.
        """
        try:
            msg = _loads(payload)
            kind = msg["type"]
        except (_JSONDecodeError, KeyError, TypeError, IndexError):
            self._fail("protocol", ProtocolError("frame is not a JSON object with a type"))
            return
        if kind == "message":
            try:
                room = msg["room"]
                seq = msg["seq"]
                sent_at = msg.get("sent_at")
                mine = msg["from"] == self.name
                expected = self.seq.expected.get(room)
                if expected is not None:
                    if seq == expected and type(seq) is int:
                        self.seq.expected[room] = seq + 1
                    else:
                        self._seq_failure(room, seq)
                if sent_at is not None:
                    series = self._ack if mine else self._fanout
                    times = series.response_times
                    if not times:
                        series.first = now
                    times.append((now - sent_at) * 1000.0)
                    series.content_length += len(payload)
                    series.last = now
            except (KeyError, TypeError):
                self._fail("protocol", ProtocolError("message frame without room/seq/from"))
        elif kind == "presence":
            pass
        elif kind == "pong":
            t = msg.get("t")
            if type(t) is float or type(t) is int:
                self._ping.add((now - t) * 1000.0, len(payload), now)
        elif kind == "joined":
            room = msg.get("room")
            seq = msg.get("seq")
            if isinstance(room, str) and isinstance(seq, int):
                self.seq.joined(room, seq)
            waiter = self._join_waiter
            if waiter is not None and not waiter.ready():
                waiter.set((msg, now))
        elif kind == "left":
            room = msg.get("room")
            if isinstance(room, str):
                self.seq.left(room)
        elif kind == "error":
            waiter = self._join_waiter
            if waiter is not None and not waiter.ready():
                waiter.set((msg, now))  # the join is reported as failed, with this code
            else:
                self._fail("error", ServerError(f"server error: {msg.get('code')}"))
        # welcome and unknown types: nothing to account

    def _seq_failure(self, room: str, seq) -> None:
        if type(seq) is not int:
            raise TypeError("seq is not an integer")
        gap = self.seq.check(room, seq)
        if gap > 0:
            self._fail("seq", SeqGap("seq gap: messages lost"), length=gap)
        elif gap < 0:
            self._fail("seq", SeqDuplicate("seq duplicate or out of order"))

    def _fail(
        self, name: str, exc: BaseException, response_time: float = 0.0, length: int = 0
    ) -> None:
        self._fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exc,
        )
