"""The plain-HTTP side of the chat port: the web page and the health check.

:func:`route` decides what a GET request for ``path`` gets. It returns
``None`` for the WebSocket endpoint, which the server upgrades; each server
turns an :class:`HttpReply` into its library's response object.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from common import codec

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


def unavailable(text: str = "server at capacity, try again later") -> HttpReply:
    """The answer to a handshake refused for lack of capacity (503)."""
    return HttpReply(503, "Service Unavailable", "text/plain; charset=utf-8", text.encode() + b"\n")
