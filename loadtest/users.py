"""Locust users that speak the twinchat protocol over ``websocket-client``.

``ChatProtocolUser`` is the abstract base: it owns one WebSocket connection and
one gevent receive greenlet, and turns everything it sees into Locust request
events with fixed names (see ``docs/loadtest.md``):

========== ===============================================================
name       what is measured (milliseconds)
========== ===============================================================
connect    TCP connect + WebSocket handshake + hello → welcome
join       join → joined
ack        say → the sender's own copy of the message comes back
fanout     now − ``sent_at`` of every message received from another user
ping       ping → pong (heartbeat of idle users)
seq        failure only: a receiver saw a seq gap (lost messages) or a
           duplicate / out-of-order seq
close      failure only: the server closed or dropped the connection while
           the user did not ask for it
error      failure only: the server sent ``{"type": "error"}``
protocol   failure only: a frame the client could not understand
========== ===============================================================

The concrete scenario users (``IdleUser``, ``ChatUser``, ``BroadcastUser``,
``ChurnUser``) only hold tasks and a wait time.

The receive path runs once per delivered frame, up to tens of thousands of
times per second in one process, so it stays small: ``recv_frame`` (no UTF-8
validation in Python), ``orjson.loads`` on bytes, no logging, one request
event per message.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import gevent
import orjson
import websocket
from gevent.event import AsyncResult
from locust import User, task

logger = logging.getLogger(__name__)

REQUEST_TYPE = "WS"

# Opcodes (RFC 6455).
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10


# Failures. Messages are fixed strings so that Locust's failure table groups
# them into a handful of rows instead of one row per seq number.
class ChatLoadError(Exception):
    """Base class of everything the chat users report as a failure."""


class SeqGap(ChatLoadError):
    """A receiver saw seq jump forward: messages were lost."""


class SeqDuplicate(ChatLoadError):
    """A receiver saw a seq it had already seen (duplicate or reordering)."""


class UnexpectedClose(ChatLoadError):
    """The connection ended while the user did not ask for it."""


class ServerError(ChatLoadError):
    """The server answered with an ``error`` frame."""


class ProtocolError(ChatLoadError):
    """A frame that does not follow the protocol."""


class ReplyTimeout(ChatLoadError):
    """A reply (welcome, joined) did not come in time."""


class ConnectFailed(ChatLoadError):
    """The TCP connection or the WebSocket handshake failed."""


def connect_error(exc: Exception) -> Exception:
    """A failure with a short, stable message (no headers, dates or addresses)."""
    if isinstance(exc, ChatLoadError):
        return exc
    if isinstance(exc, websocket.WebSocketBadStatusException):
        return ConnectFailed(f"handshake refused: HTTP {exc.status_code}")
    if isinstance(exc, websocket.WebSocketTimeoutException | TimeoutError):
        return ReplyTimeout("connect timed out")
    return ConnectFailed(f"connect failed: {type(exc).__name__}")


@dataclass(frozen=True)
class Settings:
    """Scenario settings, read once per user from Locust's parsed options."""

    # Rooms
    room_size: int = 25
    rooms: int = 4
    speakers: int = 1
    room_prefix: str = "lt"
    # Pacing (seconds)
    say_every: float = 5.0
    ping_every: float = 20.0
    session_messages: int = 3
    churn_wait: float = 1.0
    # Messages
    text_size: int = 40
    # Timeouts (seconds)
    ws_timeout: float = 10.0
    close_timeout: float = 2.0

    @classmethod
    def from_options(cls, options) -> Settings:
        """Build settings from a parsed-options namespace (missing options keep defaults)."""
        if options is None:
            return cls()
        values = {}
        for name in cls.__dataclass_fields__:
            value = getattr(options, name, None)
            if value is not None:
                values[name] = value
        return cls(**values)


class SeqTracker:
    """Expected next seq per joined room; reports gaps and duplicates.

    ``check`` returns 0 when ``seq`` is the expected one, the number of missing
    messages (> 0) on a gap, and -1 on a duplicate or out-of-order seq. After a
    gap, tracking resumes from the seq that arrived.
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


def websocket_url(host: str | None) -> str:
    """Turn Locust's ``--host`` into the chat endpoint URL.

    ``http(s)://`` becomes ``ws(s)://`` and an empty path becomes ``/ws``, so
    ``-H http://127.0.0.1:8002`` and ``-H ws://127.0.0.1:8002/ws`` are the same.
    """
    if not host:
        raise ValueError("no host: pass -H ws://127.0.0.1:PORT/ws (or set host in locust.conf)")
    if "://" not in host:
        host = "ws://" + host
    parts = urlsplit(host)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def worker_index(environment) -> int:
    """Index of this load-generator process (0 when not distributed)."""
    runner = getattr(environment, "runner", None)
    index = getattr(runner, "worker_index", 0)
    return index if isinstance(index, int) and index >= 0 else 0


_user_numbers = itertools.count()


class _Connection:
    """One WebSocket connection and the greenlet that reads it."""

    __slots__ = ("closing", "receiver", "ws")

    def __init__(self, ws: websocket.WebSocket) -> None:
        self.ws = ws
        self.closing = False
        self.receiver: gevent.Greenlet | None = None


class ChatProtocolUser(User):
    """Abstract Locust user owning one chat connection with one receive greenlet."""

    abstract = True

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.settings = Settings.from_options(environment.parsed_options)
        self.number = next(_user_numbers)
        self.worker = worker_index(environment)
        # Names are unique per load-generator process and worker (max 32 chars).
        self.chat_name = f"{self.settings.room_prefix}{self.worker}-{self.number}"[:32]
        self.room = self.choose_room()
        self.text = ("lorem ipsum dolor sit amet " * (1 + self.settings.text_size // 27))[
            : max(1, self.settings.text_size)
        ]
        self.seq = SeqTracker()
        self.conn: _Connection | None = None
        self._join_waiter: AsyncResult | None = None
        self._fire = environment.events.request.fire
        self._fragments: list[bytes] = []

    # -- scenario hooks -------------------------------------------------------

    def choose_room(self) -> str:
        """Room of this user: consecutive users fill rooms of ``room_size``, per process."""
        s = self.settings
        return f"{s.room_prefix}-w{self.worker}-{self.number // max(1, s.room_size)}"

    # -- Locust lifecycle -----------------------------------------------------

    def on_start(self) -> None:
        self.ensure_joined()

    def on_stop(self) -> None:
        self.disconnect()

    # -- operations (each fires one request event) ------------------------------

    @property
    def url(self) -> str:
        return websocket_url(self.host)

    def ensure_joined(self) -> bool:
        """Connect and join ``self.room`` unless already connected; True when ready."""
        if self.conn is not None:
            return True
        if not self.connect():
            return False
        if self.join(self.room):
            return True
        self.disconnect()  # never stay connected outside the room: retry at the next task
        return False

    def connect(self) -> bool:
        """Open the WebSocket, send hello, wait for welcome; start the receive greenlet."""
        self.disconnect()
        start = time.perf_counter()
        ws = None
        try:
            ws = websocket.create_connection(
                self.url,
                timeout=self.settings.ws_timeout,
                skip_utf8_validation=True,
                enable_multithread=True,  # the receiver may answer pings while a task sends
            )
            ws.send(orjson.dumps({"type": "hello", "name": self.chat_name}))
            welcome = self._read_reply(ws)
            if welcome.get("type") != "welcome":
                raise ProtocolError(f"expected welcome, got {welcome.get('type')!r}")
            ws.settimeout(None)
        except Exception as exc:
            if ws is not None:
                ws.shutdown()
            self._fail("connect", connect_error(exc), (time.perf_counter() - start) * 1000.0)
            return False
        elapsed = (time.perf_counter() - start) * 1000.0
        conn = _Connection(ws)
        self.conn = conn
        self.seq = SeqTracker()
        conn.receiver = gevent.spawn(self._receive_loop, conn)
        self._fire(
            request_type=REQUEST_TYPE,
            name="connect",
            response_time=elapsed,
            response_length=0,
            exception=None,
        )
        return True

    def join(self, room: str) -> bool:
        """Join ``room`` and wait for ``joined`` (the receiver sets the seq baseline)."""
        conn = self.conn
        if conn is None:
            return False
        waiter = self._join_waiter = AsyncResult()
        start = time.perf_counter()
        try:
            conn.ws.send(orjson.dumps({"type": "join", "room": room}))
            reply = waiter.get(timeout=self.settings.ws_timeout)
        except gevent.Timeout:
            reply = ReplyTimeout("no joined reply in time")
        except Exception as exc:
            reply = exc
        finally:
            self._join_waiter = None
        elapsed = (time.perf_counter() - start) * 1000.0
        if isinstance(reply, Exception):
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

    def say(self) -> bool:
        """Send one message with ``sent_at``; ack and fanout are measured by receivers."""
        conn = self.conn
        if conn is None:
            return False
        payload = orjson.dumps(
            {"type": "say", "room": self.room, "text": self.text, "sent_at": time.time()}
        )
        return self._send(conn, payload)

    def ping(self) -> bool:
        """Heartbeat; the pong is measured by the receiver as ``ping``."""
        conn = self.conn
        if conn is None:
            return False
        return self._send(conn, orjson.dumps({"type": "ping", "t": time.time()}))

    def disconnect(self) -> None:
        """Close cleanly: close frame, wait (bounded) for the server's, then drop the socket."""
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        conn.closing = True
        with contextlib.suppress(Exception):  # already gone: the receiver saw it
            conn.ws.send_close(websocket.STATUS_NORMAL)
        receiver = conn.receiver
        if receiver is not None and receiver is not gevent.getcurrent():
            receiver.join(timeout=self.settings.close_timeout)
            if not receiver.dead:
                receiver.kill(block=False)
        conn.ws.shutdown()

    # -- receive path -----------------------------------------------------------

    def _send(self, conn: _Connection, payload: bytes) -> bool:
        try:
            conn.ws.send(payload)
            return True
        except Exception:
            if not conn.closing and self.conn is conn:
                self._fail("close", UnexpectedClose("send failed: connection lost"))
                self._drop(conn)
            return False

    def _drop(self, conn: _Connection) -> None:
        """Forget a broken connection (the next task reconnects)."""
        if self.conn is conn:
            self.conn = None
        conn.closing = True
        waiter = self._join_waiter
        if waiter is not None and not waiter.ready():
            waiter.set(UnexpectedClose("connection closed while joining"))
        if conn.receiver is not None and conn.receiver is not gevent.getcurrent():
            conn.receiver.kill(block=False)
        conn.ws.shutdown()

    @staticmethod
    def _read_reply(ws: websocket.WebSocket) -> dict:
        """Read frames until a text frame (used before the receiver runs)."""
        while True:
            opcode, data = ws.recv_data()
            if opcode == _OP_TEXT:
                return orjson.loads(data)
            if opcode == _OP_CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                raise UnexpectedClose(f"server closed the connection ({code})")

    def _receive_loop(self, conn: _Connection) -> None:
        ws = conn.ws
        recv_frame = ws.recv_frame
        handle = self.handle_frame
        try:
            while True:
                frame = recv_frame()
                opcode = frame.opcode
                if opcode == _OP_TEXT and frame.fin:
                    handle(frame.data)
                elif opcode == _OP_PING:
                    ws.pong(frame.data)
                elif opcode == _OP_CLOSE:
                    self._on_close_frame(conn, frame.data)
                    return
                elif opcode in (_OP_TEXT, _OP_CONT):  # fragmented text: rare
                    self._fragments.append(frame.data)
                    if frame.fin:
                        data, self._fragments = b"".join(self._fragments), []
                        handle(data)
                elif opcode == _OP_BINARY:
                    self._fail("protocol", ProtocolError("binary frame from server"))
        except (websocket.WebSocketException, OSError) as exc:
            if not conn.closing:
                kind = type(exc).__name__
                self._fail("close", UnexpectedClose(f"connection lost ({kind})"))
                self._drop(conn)

    def _on_close_frame(self, conn: _Connection, data: bytes) -> None:
        if conn.closing:
            return  # the server's answer to our close
        code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
        self._fail("close", UnexpectedClose(f"server closed the connection ({code})"))
        with contextlib.suppress(Exception):
            conn.ws.send_close(code if code not in (1005, 1006) else websocket.STATUS_NORMAL)
        self._drop(conn)

    def handle_frame(self, data: bytes) -> None:
        """Account for one text frame from the server (the per-message hot path)."""
        try:
            msg = orjson.loads(data)
            kind = msg["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._fail("protocol", ProtocolError("frame is not a JSON object with a type"))
            return
        if kind == "message":
            try:
                room = msg["room"]
                gap = self.seq.check(room, msg["seq"])
                sent_at = msg.get("sent_at")
                mine = msg["from"] == self.chat_name
            except (KeyError, TypeError):
                self._fail("protocol", ProtocolError("message frame without room/seq/from"))
                return
            if gap:
                if gap > 0:
                    self._fail("seq", SeqGap("seq gap: messages lost"), length=gap)
                else:
                    self._fail("seq", SeqDuplicate("seq duplicate or out of order"))
            if sent_at is not None:
                self._fire(
                    request_type=REQUEST_TYPE,
                    name="ack" if mine else "fanout",
                    response_time=(time.time() - sent_at) * 1000.0,
                    response_length=len(data),
                    exception=None,
                )
        elif kind == "presence":
            pass
        elif kind == "pong":
            t = msg.get("t")
            if isinstance(t, int | float):
                self._fire(
                    request_type=REQUEST_TYPE,
                    name="ping",
                    response_time=(time.time() - t) * 1000.0,
                    response_length=len(data),
                    exception=None,
                )
        elif kind == "joined":
            room = msg.get("room")
            seq = msg.get("seq")
            if isinstance(room, str) and isinstance(seq, int):
                self.seq.joined(room, seq)
            waiter = self._join_waiter
            if waiter is not None and not waiter.ready():
                waiter.set(msg)
        elif kind == "left":
            self.seq.left(msg.get("room", ""))
        elif kind == "error":
            waiter = self._join_waiter
            if waiter is not None and not waiter.ready():
                waiter.set(msg)  # the join is reported as failed, with this code
            else:
                self._fail("error", ServerError(f"server error: {msg.get('code')}"))
        # welcome or unknown types: nothing to account

    def _fail(self, name: str, exc: BaseException, response_time: float = 0.0, length: int = 0):
        self._fire(
            request_type=REQUEST_TYPE,
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exc,
        )


# -- scenarios -------------------------------------------------------------------


class IdleUser(ChatProtocolUser):
    """Connect, hello, join, then only a heartbeat ping every ``--ping-every`` seconds."""

    def wait_time(self) -> float:
        return self.settings.ping_every

    @task
    def heartbeat(self) -> None:
        if self.ensure_joined():
            self.ping()


class ChatUser(ChatProtocolUser):
    """Rooms of ``--room-size`` users; each user says something every ``--say-every`` s."""

    def on_start(self) -> None:
        super().on_start()
        # Spread the first message so that users spawned together do not speak in lockstep.
        gevent.sleep(random.uniform(0, self.settings.say_every))

    def wait_time(self) -> float:
        return self.settings.say_every

    @task
    def talk(self) -> None:
        if self.ensure_joined():
            self.say()


class BroadcastUser(ChatProtocolUser):
    """``--rooms`` big rooms shared by all processes; ``--speakers`` users per room and
    process say something every ``--say-every`` s, the others listen (and ping)."""

    def choose_room(self) -> str:
        s = self.settings
        return f"{s.room_prefix}-b{self.number % max(1, s.rooms)}"

    @property
    def speaker(self) -> bool:
        s = self.settings
        return self.number < max(1, s.rooms) * s.speakers

    def on_start(self) -> None:
        super().on_start()
        if self.speaker:
            gevent.sleep(random.uniform(0, self.settings.say_every))

    def wait_time(self) -> float:
        return self.settings.say_every if self.speaker else self.settings.ping_every

    @task
    def talk_or_listen(self) -> None:
        if self.ensure_joined():
            if self.speaker:
                self.say()
            else:
                self.ping()


class ChurnUser(ChatProtocolUser):
    """Short sessions: connect, join, say ``--session-messages`` times (one every
    ``--say-every`` s), close, pause ``--churn-wait`` s, and again."""

    def on_start(self) -> None:
        gevent.sleep(random.uniform(0, self.settings.churn_wait))

    def wait_time(self) -> float:
        return self.settings.churn_wait

    @task
    def session(self) -> None:
        if not (self.connect() and self.join(self.room)):
            self.disconnect()
            return
        for _ in range(self.settings.session_messages):
            if not self.say():
                break
            gevent.sleep(self.settings.say_every)  # also leaves time for the last ack
        self.disconnect()


SCENARIOS: dict[str, type[ChatProtocolUser]] = {
    "idle": IdleUser,
    "chat": ChatUser,
    "broadcast": BroadcastUser,
    "churn": ChurnUser,
}
