"""What the chat client reports as failures, with short stable messages.

Messages are fixed strings (no seq numbers, addresses or dates), so that
Locust's failure table groups them into a handful of rows.
"""

from __future__ import annotations


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
    """A reply (welcome, joined), a connect or a send did not complete in time."""


class ConnectFailed(ChatLoadError):
    """The TCP connection or the WebSocket handshake failed."""


def connect_error(exc: BaseException) -> ChatLoadError:
    """A failure with a short, stable message (no headers, dates or addresses)."""
    if isinstance(exc, ChatLoadError):
        return exc
    if isinstance(exc, TimeoutError):
        return ReplyTimeout("connect timed out")
    return ConnectFailed(f"connect failed: {type(exc).__name__}")
