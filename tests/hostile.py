"""Helpers for the hardening tests: a bystander, a raw WebSocket client, a TCP relay.

* :class:`Bystander` is a well-behaved client that keeps chatting in a room,
  in its own thread, while a test attacks the server; at the end it checks it
  received every message of the room, in order, in strict JSON.
* :class:`RawClient` speaks WebSocket through the websockets Sans-I/O client
  over a plain socket, so a test can send exactly the frames it wants
  (oversized headers, fragments, half a handshake) and read what comes back.
* :class:`Relay` forwards TCP between a client and the server until it is
  frozen: then it stops forwarding both ways without closing anything, which
  is what a peer that lost power looks like from the server.
"""

from __future__ import annotations

import itertools
import json
import selectors
import socket
import threading
import time
from typing import Any

from chatclient import TIMEOUT, ChatClient, metric_value
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

_rooms = itertools.count(1)


def new_room(prefix: str = "hard") -> str:
    return f"{prefix}-{next(_rooms)}-{time.monotonic_ns() % 100000}"


def strict_json(raw: str | bytes) -> Any:
    """Parse like a browser's JSON.parse: NaN and Infinity are not JSON."""

    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(raw, parse_constant=reject)


def rss(server) -> float:
    """The server's resident memory in bytes, from its own metrics."""
    return metric_value(server.metrics_text(), "process_resident_memory_bytes")


# Bystander


class Bystander:
    """A client that keeps chatting normally in ``room`` while a test runs.

    It says something every ``interval`` seconds (under the rate limit),
    reads everything, and at :meth:`finish` checks that it received every
    message of the room with seq consecutive from the one it joined at, its
    own messages in the order it sent them, no error, every frame strict JSON.
    """

    def __init__(self, url: str, room: str, interval: float = 0.1, **connect_kwargs: Any) -> None:
        self.url, self.room, self.interval = url, room, interval
        self.client = ChatClient(url, **connect_kwargs)
        self.name = self.client.hello()["name"]
        self.base_seq = self.client.join(room)["seq"]
        self.received: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        self.sent: list[str] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bystander", daemon=True)
        self._thread.start()

    def __enter__(self) -> Bystander:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.client.close()

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                text = f"{self.name} says {n}"
                self.client.say(self.room, text)
                self.sent.append(text)
                n += 1
                self._read_until(time.monotonic() + self.interval)
        except BaseException as exc:  # reported by finish()
            self.errors.append(exc)

    def _read_until(self, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = self.client.ws.recv(left)
            except TimeoutError:
                return
            self._record(strict_json(raw))

    def _record(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            assert message["room"] == self.room, message
            self.received.append(message)
        elif kind == "presence":
            self.presence.append(message)
        else:
            raise AssertionError(f"bystander got {message}")

    def wait_presence(self, name: str, event: str, timeout: float) -> float | None:
        """Wait until a presence ``event`` for ``name`` arrived; return when (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.presence):
                if message["name"] == name and message["event"] == event:
                    return time.monotonic()
            time.sleep(0.02)
        return None

    def finish(self, server=None) -> None:
        """Stop chatting, say a last message, and check everything the room delivered."""
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "bystander thread stuck"
        assert not self.errors, f"bystander failed: {self.errors[0]!r}"
        last = f"{self.name} done"
        self.client.say(self.room, last)
        self.sent.append(last)
        deadline = time.monotonic() + 3 * TIMEOUT
        while not (self.received and self.received[-1]["text"] == last):
            assert time.monotonic() < deadline, "bystander's last message never came back"
            self._record(strict_json(self.client.ws.recv(TIMEOUT)))
        seqs = [m["seq"] for m in self.received]
        assert seqs == list(range(self.base_seq + 1, self.base_seq + 1 + len(seqs))), (
            "bystander saw a gap or a reordering in the room's seq"
        )
        mine = [m["text"] for m in self.received if m["from"] == self.name]
        assert mine == self.sent, "bystander's own messages did not all come back in order"
        assert len(self.sent) >= 2
        if server is not None:
            assert server.proc.poll() is None, "server died"
            assert server.healthz()["status"] == "ok"


# Raw WebSocket client


class RawClient:
    """A WebSocket client on a plain socket and the websockets Sans-I/O layer."""

    def __init__(self, url: str, *, handshake: bool = True, rcvbuf: int | None = None,
                 timeout: float = TIMEOUT, **protocol_kwargs: Any) -> None:  # fmt: skip
        wsuri = parse_uri(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((wsuri.host, wsuri.port))
        protocol_kwargs.setdefault("max_size", None)
        self.protocol = ClientProtocol(wsuri, **protocol_kwargs)
        self.frames: list[Frame] = []
        self.eof = False
        self.name = ""
        if handshake:
            self.request = self.protocol.connect()
            self.protocol.send_request(self.request)
            self.flush()
            while self.protocol.handshake_exc is None and self.protocol.state.name == "CONNECTING":
                self.read_some()
            if self.protocol.handshake_exc is not None:
                raise self.protocol.handshake_exc

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def read_some(self) -> None:
        """One recv; feed it to the protocol, keep the frames it yields."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.eof = True
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self.frames.append(event)
        try:
            self.flush()
        except OSError:
            pass
        if self.eof:
            raise EOFError

    def hello(self, name: str) -> None:
        self.name = name
        self.send_json({"type": "hello", "name": name})
        assert self.next_json()["type"] == "welcome"

    def join(self, room: str) -> None:
        self.send_json({"type": "join", "room": room})
        assert self.next_json(skip_others=True)["type"] == "joined"

    def send_json(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self.flush()

    def next_json(self, timeout: float = TIMEOUT, skip_others: bool = False) -> dict[str, Any]:
        """The next text message from the server (skipping control frames, and with
        ``skip_others`` presence and messages of other clients)."""
        self.sock.settimeout(timeout)
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                if frame.opcode is Opcode.TEXT:
                    message = json.loads(frame.data)
                    if skip_others and (
                        message["type"] == "presence"
                        or (message["type"] == "message" and message["from"] != self.name)
                    ):
                        continue
                    return message
            self.read_some()

    def close_code(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; return the code of its close frame (None if none)."""
        self.sock.settimeout(timeout)
        try:
            while self.protocol.close_rcvd is None:
                self.frames.clear()
                self.read_some()
        except EOFError:
            pass
        return self.protocol.close_rcvd.code if self.protocol.close_rcvd else None


def masked_frame(payload: bytes, *, opcode: int = 0x1, fin: bool = True, rsv1: bool = False,
                 length: int | None = None) -> bytes:  # fmt: skip
    """Serialize a client frame by hand (any RSV bits, any announced ``length``)."""
    length = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload  # the zero mask leaves the payload as is


def raw_request(host: str, port: int, request: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send raw bytes, read until the server closes (or ``timeout``); return what came back."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return data


def hello_and_join(client: ChatClient, room: str) -> None:
    client.hello()
    client.join(room)


def close_code(client: ChatClient, timeout: float = TIMEOUT) -> int | None:
    """Read until the server closes the connection; return the close code it sent."""
    try:
        while True:
            client.ws.recv(timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


# TCP relay


class Relay:
    """Forward TCP from a local port to ``target`` until :meth:`freeze`.

    Frozen, it stops reading and writing on both sides and keeps every socket
    open: no close frame, no FIN, no RST ever reaches the server.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = [self.listener]
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._stop.is_set():
            if self.frozen.is_set():
                self._stop.wait(0.05)
                continue
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target)
                    self._sockets += [client, upstream]
                    peers[client], peers[upstream] = upstream, client
                    sel.register(client, selectors.EVENT_READ)
                    sel.register(upstream, selectors.EVENT_READ)
                    continue
                if self.frozen.is_set():
                    break
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for s in (sock, peers[sock]):
                        sel.unregister(s)
                        s.close()
                    continue
                peers[sock].sendall(data)
        sel.close()
