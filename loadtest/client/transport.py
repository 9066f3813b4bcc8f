"""Cooperative socket I/O for the chat client: TCP connect, the HTTP upgrade, sends.

The client's sockets are plain non-blocking OS sockets (the original
``socket.socket``, even when gevent has monkey-patched the module), because
the process's :class:`~loadtest.client.reactor.Reactor` reads them directly
with one ``recvmsg`` per ready socket. Every socket asks the kernel to stamp
each segment with the time it arrived (``SO_TIMESTAMPNS``): the reactor reads
in ticks, so a message may wait a few milliseconds in the socket, and
:func:`arrival_time` gives the time it really arrived. :func:`bind_source` makes every socket the
process opens from then on leave from one local address (127.0.0.2, ...), so
that each load-generator process has its own ~28,000 ephemeral ports per
server address (docs/loadtest.md). The functions here wait cooperatively
(``gevent.socket.wait_read``/``wait_write``), so a task that sends, or a
connect in progress, only blocks its own greenlet.

The opening handshake is websockets' Sans-I/O ``ClientProtocol``: it builds
the request and checks the response (status 101, ``Sec-WebSocket-Accept``);
no extension is offered, so frames are never compressed.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket as _socket_module
import struct
import time
from urllib.parse import urlsplit

from gevent import monkey
from gevent.socket import wait_read, wait_write
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

from loadtest.client.errors import ConnectFailed, ReplyTimeout

OsSocket = monkey.get_original("socket", "socket")
RECV_SIZE = 65536
MAX_RESPONSE_HEAD = 16384
# Linux: pick the source port at connect(), per destination, not at bind() (which would
# make every port unique to the source address). Not in Python's socket module.
IP_BIND_ADDRESS_NO_PORT = getattr(_socket_module, "IP_BIND_ADDRESS_NO_PORT", 24)

# Linux: the kernel stamps each received segment (CLOCK_REALTIME, struct timespec); the stamp
# of the last segment a read consumed comes back as ancillary data. Not in Python 3.11's module.
SO_TIMESTAMPNS = getattr(_socket_module, "SO_TIMESTAMPNS", 35)
STAMP_SPACE = _socket_module.CMSG_SPACE(16)  # ancillary buffer for one timespec
_timespec = struct.Struct("qq").unpack

_source_address: str | None = None  # None: the kernel picks the source address


def source_for(base: str, process: int) -> str | None:
    """The source address of load-generator process ``process``: ``base`` + ``process``
    (``127.0.0.2`` → 127.0.0.2, 127.0.0.3, ...); None when ``base`` is empty."""
    if not base:
        return None
    return str(ipaddress.ip_address(base) + process)


def bind_source(address: str | None) -> None:
    """Bind every socket this process opens from now on to ``address`` (None: let the
    kernel choose, the default)."""
    global _source_address
    _source_address = address


def open_socket(url: str, timeout: float) -> _socket_module.socket:
    """A connected, non-blocking TCP socket to the host of ``url`` (``ws://`` only)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ConnectFailed(f"unsupported scheme {parts.scheme!r}: the load client speaks ws://")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    family, _type, proto, _name, address = _socket_module.getaddrinfo(
        host, port, type=_socket_module.SOCK_STREAM
    )[0]
    sock = OsSocket(family, _socket_module.SOCK_STREAM, proto)
    try:
        if _source_address is not None:
            sock.setsockopt(_socket_module.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((_source_address, 0))
        sock.setblocking(False)
        sock.setsockopt(_socket_module.IPPROTO_TCP, _socket_module.TCP_NODELAY, 1)
        try:
            sock.setsockopt(_socket_module.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:  # not Linux: arrival_time falls back to the time of the read
            pass
        err = sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            wait_write(
                sock.fileno(), timeout=timeout, timeout_exc=ReplyTimeout("connect timed out")
            )
            err = sock.getsockopt(_socket_module.SOL_SOCKET, _socket_module.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))  # ConnectionRefusedError for ECONNREFUSED, ...
    except BaseException:
        sock.close()
        raise
    return sock


def send_all(sock: _socket_module.socket, data: bytes, timeout: float) -> None:
    """Send all of ``data``, waiting cooperatively while the kernel buffer is full.

    Raises ``OSError`` when the connection is gone, :class:`ReplyTimeout` when
    the peer has not taken anything for ``timeout`` seconds. Callers that share
    the socket must hold the connection's send lock.
    """
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)[sent:]
    while view:
        wait_write(sock.fileno(), timeout=timeout, timeout_exc=ReplyTimeout("send timed out"))
        try:
            sent = sock.send(view)
        except BlockingIOError:
            continue
        view = view[sent:]


def recv_some(sock: _socket_module.socket, timeout: float) -> bytes:
    """What the socket holds (up to 64 KiB), waiting cooperatively for at least one byte;
    ``b""`` at end of stream."""
    while True:
        try:
            return sock.recv(RECV_SIZE)
        except BlockingIOError:
            wait_read(sock.fileno(), timeout=timeout, timeout_exc=ReplyTimeout("reply timed out"))


def arrival_time(ancillary: list) -> float:
    """When the data of a ``recvmsg(RECV_SIZE, STAMP_SPACE)`` arrived (``time.time()``
    seconds): the kernel's stamp of the last segment read, or now if there is none.

    With several messages in one read, the earlier ones arrived before the
    stamp: they are timed as late as the last one, never earlier.
    """
    if ancillary:
        seconds, nanoseconds = _timespec(ancillary[0][2])
        return seconds + nanoseconds * 1e-9
    return time.time()


def handshake(sock: _socket_module.socket, url: str, timeout: float) -> bytes:
    """Perform the WebSocket opening handshake; return bytes read past the response.

    Raises :class:`ConnectFailed` with a short, stable message when the server
    refuses (``handshake refused: HTTP 503``) or answers something else.
    """
    protocol = ClientProtocol(parse_uri(url))
    protocol.send_request(protocol.connect())
    for data in protocol.data_to_send():
        send_all(sock, data, timeout)
    head = b""
    while True:
        data = recv_some(sock, timeout)
        if not data:
            raise ConnectFailed("handshake failed: connection closed")
        head += data
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(head) > MAX_RESPONSE_HEAD:
            raise ConnectFailed("handshake failed: response head too long")
    status_line = head[: head.find(b"\r\n")].split(b" ", 2)
    if len(status_line) < 2 or status_line[1] != b"101":
        status = status_line[1].decode("ascii", "replace") if len(status_line) > 1 else "?"
        raise ConnectFailed(f"handshake refused: HTTP {status}")
    # Only the response head goes to websockets; what follows is frames, for our parser.
    protocol.receive_data(head[: end + 4])
    response = next((e for e in protocol.events_received() if isinstance(e, Response)), None)
    exc = protocol.handshake_exc
    if exc is not None or response is None:
        raise ConnectFailed(f"handshake failed: {type(exc).__name__}")
    return head[end + 4 :]
