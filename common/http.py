"""The plain-HTTP side of the chat port: the web page, the health check, refusals.

:func:`answer` decides what a GET request for ``path`` gets, for both
servers: a page, or ``None`` for the WebSocket endpoint (which the server
upgrades), or a 503 with the :class:`~common.reasons.RejectReason` to count
when the server is full. Each server turns an :class:`HttpReply` into its
library's response object.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from common import codec
from common.reasons import RejectReason

WEBSOCKET_PATH = "/ws"
STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    reason: str
    content_type: str
    body: bytes

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]


@cache
def _page() -> bytes:
    return (STATIC_DIR / "index.html").read_bytes()


def route(path: str, implementation: str, connections: int) -> HttpReply | None:
    """Answer a GET for ``path``; ``None`` means "upgrade to WebSocket"."""
    path = path.split("?", 1)[0]
    if path == WEBSOCKET_PATH:
        return None
    if path in ("/", "/index.html"):
        return HttpReply(200, "OK", "text/html; charset=utf-8", _page())
    if path == "/healthz":
        body = codec.encode(
            {"status": "ok", "implementation": implementation, "connections": connections}
        )
        return HttpReply(200, "OK", "application/json", body)
    return HttpReply(404, "Not Found", "text/plain; charset=utf-8", b"not found\n")


def answer(
    path: str,
    implementation: str,
    *,
    sessions: int,
    sockets: int,
    max_connections: int,
    max_sockets: int,
) -> tuple[HttpReply | None, RejectReason | None]:
    """What a GET for ``path`` gets, and why it was refused if it was.

    ``sessions`` are the open chat sessions, ``sockets`` the connections the
    server holds (handshakes in progress included). A WebSocket upgrade gets
    503 when ``sockets`` reaches ``max_sockets`` (near the fd limit:
    ``overload``) or ``sessions`` reaches ``max_connections`` (``capacity``);
    otherwise ``(None, None)``: upgrade.
    """
    reply = route(path, implementation, sessions)
    if reply is not None:
        return reply, None
    if sockets >= max_sockets:
        return unavailable(), RejectReason.OVERLOAD
    if sessions >= max_connections:
        return unavailable(), RejectReason.CAPACITY
    return None, None


def refused_upgrade(path: str, status: int) -> bool:
    """Whether the WebSocket layer refused an upgrade that :func:`answer` let through.

    :func:`answer` replies to the WebSocket path only with 503; any other
    status there but 101 comes from the library (bad upgrade headers, an
    origin not allowed): a ``handshake`` rejection.
    """
    return path.split("?", 1)[0] == WEBSOCKET_PATH and status not in (101, 503)


def unavailable(text: str = "server at capacity, try again later") -> HttpReply:
    """The answer to a handshake refused for lack of capacity (503)."""
    return HttpReply(503, "Service Unavailable", "text/plain; charset=utf-8", text.encode() + b"\n")
