"""A lean WebSocket client connection for the load client: asyncio protocol, counting reader.

The load client must stay faster than the server it measures while it runs on
one CPU. A full client (``websockets.asyncio.client``) parses every frame
through a generator, builds a message object and wakes a task for it: about
as much CPU per frame as the server spends delivering it. A benchmark only
needs to *count* frames, so this client keeps the parts that must be exact
and skips the rest:

* client frames are built by websockets (:class:`websockets.frames.Frame`,
  masked as RFC 6455 requires), once per distinct frame;
* the opening handshake is a fixed HTTP request whose
  ``Sec-WebSocket-Accept`` answer is checked against the key;
* server frames (never masked) are split by their headers and counted
  without decoding their payload; pings are answered with pongs and a close
  frame with a close frame, so the servers' keepalive and closing handshake
  see a well-behaved client.

It runs on whatever loop is running (the workers use uvloop).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

from websockets.frames import Frame, Opcode
from websockets.utils import accept_key

KEY = base64.b64encode(b"twinchat-bench!!").decode()
ACCEPT = accept_key(KEY)
MAX_RESPONSE_HEAD = 16384


class Refused(Exception):
    """The server answered the handshake with something else than 101, or closed."""


def client_frame(opcode: Opcode, payload: bytes) -> bytes:
    """A masked client frame, serialized by websockets."""
    return Frame(opcode, payload).serialize(mask=True)


def text_frame(text: str) -> bytes:
    return client_frame(Opcode.TEXT, text.encode())


CLOSE_FRAME = client_frame(Opcode.CLOSE, b"\x03\xe8")  # 1000, no reason
PING_FRAME = client_frame(Opcode.PING, b"bnch")


def handshake_request(host: str, port: int, path: str = "/ws") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        "User-Agent: twinchat-bench\r\n\r\n"
    ).encode()


class CountingClient(asyncio.Protocol):
    """One connection. ``frames`` counts text frames received since the handshake.

    ``marker``: bytes that identify this client's own messages; each text frame
    that contains it counts in ``acks`` and calls ``on_ack``.
    """

    def __init__(self, request: bytes, marker: bytes | None = None) -> None:
        self.request = request
        self.marker = marker
        self.on_ack: Callable[[], None] | None = None
        self.say_frame = b""  # what a sender sends, set by its owner
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.is_open = False
        self.frames = 0
        self.acks = 0
        self.pongs = 0
        self._buffer = b""
        self._waiter: tuple[int, asyncio.Future[None]] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        if not self.is_open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_RESPONSE_HEAD:
                    self._refuse("response head too long")
                else:
                    self._buffer = data
                return
            head = data[:end].decode("latin-1")
            status = head.split(" ", 2)
            if len(status) < 2 or status[1] != "101" or ACCEPT not in head:
                self._refuse(head.split("\r\n", 1)[0])
                return
            self.is_open = True
            if not self.opened.done():
                self.opened.set_result(None)
            data = data[end + 4 :]
        self._frames(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        if not self.opened.done():
            self.opened.set_exception(Refused("connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self._waiter is not None and not self._waiter[1].done():
            self._waiter[1].set_exception(Refused("connection closed"))

    # Frames

    def _frames(self, data: bytes) -> None:
        pos, size = 0, len(data)
        marker = self.marker
        while size - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4])
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10])
                head = 10
            end = pos + head + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == 1:
                self.frames += 1
                if marker is not None and data.find(marker, pos + head, end) >= 0:
                    self.acks += 1
                    if self.on_ack is not None:
                        self.on_ack()
            elif opcode == 9:  # ping: answer with the same payload
                self.send(client_frame(Opcode.PONG, data[pos + head : end]))
            elif opcode == 10:
                self.pongs += 1
            elif opcode == 8:
                self.send(CLOSE_FRAME)
            pos = end
        if pos < size:
            self._buffer = data[pos:]
        waiter = self._waiter
        if waiter is not None and self.frames + self.pongs >= waiter[0]:
            self._waiter = None
            if not waiter[1].done():
                waiter[1].set_result(None)

    def _refuse(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(Refused(why))
        if self.transport is not None:
            self.transport.abort()

    # Actions

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    async def wait_frames(self, count: int) -> None:
        """Wait until ``count`` text frames and pongs in all have arrived since the handshake."""
        if self.frames + self.pongs >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiter = (count, future)
        await future

    async def close(self, timeout: float) -> None:
        """Closing handshake: send a close frame, wait for the server to end TCP, bounded."""
        self.send(CLOSE_FRAME)
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(
    host: str, port: int, marker: bytes | None = None, timeout: float = 10.0
) -> CountingClient:
    """Open a TCP connection and complete the WebSocket handshake, or raise Refused/OSError."""
    loop = asyncio.get_running_loop()
    request = handshake_request(host, port)
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: CountingClient(request, marker), host, port), timeout
    )
    try:
        await asyncio.wait_for(asyncio.shield(client.opened), timeout)
    except BaseException:
        client.abort()
        raise
    return client
