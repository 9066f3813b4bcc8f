"""A tiny scripted WebSocket server for the load client's tests, on real loopback sockets.

:class:`ScriptedServer` listens on a free port and runs ``script(peer)`` in a
thread for every connection, after the opening handshake (websockets'
Sans-I/O ``ServerProtocol`` over a plain socket). The script plays the chat
server's part exactly as the test needs it: answer ``hello`` and ``join``,
then send a seq gap, hold a message, send a ping at a chosen moment, break
the framing... Whatever the script raises is kept in ``errors`` for the test
to check; ``peer.log`` keeps every frame received from the client.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

TIMEOUT = 10.0  # upper bound on any single wait; tests never assert durations


class PeerClosed(Exception):
    """The client closed the connection."""


class Peer:
    """The server's side of one connection, for a script."""

    def __init__(self, sock: socket.socket, *, max_size: int | None = 2**20) -> None:
        self.sock = sock
        self.protocol = ServerProtocol(max_size=max_size)
        self.log: list[Frame] = []  # every frame received from the client, in order
        self._pending: list[Frame] = []
        sock.settimeout(TIMEOUT)

    # -- the handshake and reading -------------------------------------------------------

    def handshake(self) -> None:
        while True:
            for event in self._read():
                if isinstance(event, Request):
                    self.protocol.send_response(self.protocol.accept(event))
                    self.flush()
                    return

    def _read(self) -> list:
        data = self.sock.recv(65536)
        if not data:
            self.protocol.receive_eof()
            raise PeerClosed("client closed the connection")
        self.protocol.receive_data(data)
        self.flush()
        if self.protocol.parser_exc is not None:
            raise self.protocol.parser_exc
        return self.protocol.events_received()

    def next_frame(self) -> Frame:
        """The next frame from the client (pings are answered by the protocol)."""
        while not self._pending:
            for event in self._read():
                self.log.append(event)
                self._pending.append(event)
        return self._pending.pop(0)

    def recv_json(self) -> dict[str, Any]:
        """The next text message from the client, decoded."""
        while True:
            frame = self.next_frame()
            if frame.opcode is Opcode.TEXT:
                return orjson.loads(frame.data)
            if frame.opcode is Opcode.CLOSE:
                raise PeerClosed("client sent a close frame")

    def expect(self, kind: str) -> dict[str, Any]:
        message = self.recv_json()
        if message.get("type") != kind:
            raise AssertionError(f"expected {kind}, got {message}")
        return message

    # -- writing ---------------------------------------------------------------------------

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send_json(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(orjson.dumps(message))
        self.flush()

    def send_ping(self, payload: bytes) -> None:
        self.protocol.send_ping(payload)
        self.flush()

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are, outside the protocol (to break the framing on purpose)."""
        self.sock.sendall(data)

    def close(self, code: int, reason: str = "") -> None:
        self.protocol.send_close(code, reason)
        self.flush()

    # -- the chat protocol's opening ---------------------------------------------------------

    def welcome(self) -> str:
        """Answer ``hello`` with ``welcome``; return the client's name."""
        hello = self.expect("hello")
        self.send_json({"type": "welcome", "name": hello["name"], "limits": {}})
        return hello["name"]

    def joined(self, last_seq: int = 0) -> str:
        """Answer ``join`` with ``joined`` (last seq ``last_seq``); return the room."""
        join = self.expect("join")
        room = join["room"]
        self.send_json({"type": "joined", "room": room, "seq": last_seq, "members": 2})
        return room


def message(room: str, seq: int, sender: str, sent_at: float | None = None) -> dict[str, Any]:
    """A chat ``message`` frame as the servers send it."""
    msg: dict[str, Any] = {"type": "message", "room": room, "seq": seq, "from": sender}
    msg.update(ts=time.time(), text="hi")
    if sent_at is not None:
        msg["sent_at"] = sent_at
    return msg


class ScriptedServer:
    """Serves ``script`` to every connection, each in its own thread, until closed."""

    def __init__(
        self,
        script: Callable[[Peer], None],
        *,
        rcvbuf: int | None = None,
        max_size: int | None = 2**20,
    ) -> None:
        self.script = script
        self.max_size = max_size
        self.errors: list[BaseException] = []
        self.peers: list[Peer] = []
        self.done = threading.Event()  # set when a script returns or raises
        self._listener = socket.create_server(("127.0.0.1", 0))
        if rcvbuf is not None:  # inherited by accepted sockets
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for peer in self.peers:
            try:
                peer.sock.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(TIMEOUT)

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            peer = Peer(sock, max_size=self.max_size)
            self.peers.append(peer)
            thread = threading.Thread(target=self._serve, args=(peer,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, peer: Peer) -> None:
        try:
            peer.handshake()
            self.script(peer)
        except PeerClosed:
            pass
        except BaseException as exc:  # kept for the test to report
            if not self._closed:
                self.errors.append(exc)
        finally:
            self.done.set()
