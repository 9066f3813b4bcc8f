"""The twinchat core: the chat protocol with no I/O.

Everything a chat server decides lives here: parsing and validating client
messages, the session state machine, rooms, sequence numbers, history, rate
limits and the server messages. The two servers (``threaded_server`` and
``async_server``) only move bytes between sockets and :class:`ChatCore`.

Only :mod:`common.metrics` imports an exposition library; no module here
imports sockets, threads or asyncio.
"""

from common.chat import ChatCore, Outcome, Session
from common.errors import CloseCode, ErrorCode, ProtocolError
from common.limits import Limits

__all__ = [
    "ChatCore",
    "CloseCode",
    "ErrorCode",
    "Limits",
    "Outcome",
    "ProtocolError",
    "Session",
]
