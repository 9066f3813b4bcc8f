"""Why things happen: the label values of the servers' counters, and who decides them.

Every label value of ``chat_connections_rejected_total``,
``chat_disconnects_total``, ``chat_messages_dropped_total`` and
``chat_broker_errors_total`` is a member of one enum here, so both servers
count the same events with the same words. :func:`disconnect_reason` is the
one rule for why a connection ended.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

# Close codes after which a peer's close counts as a normal end (RFC 6455 7.4.1).
NORMAL_CLOSE_CODES = frozenset({1000, 1001})
# What both servers send when a client misses its keepalive pong (common/keepalive.py),
# as websockets does: 1011 with this reason, and no close frame comes back.
KEEPALIVE_TIMEOUT_CODE = 1011
KEEPALIVE_TIMEOUT_REASON = "keepalive ping timeout"


class RejectReason(StrEnum):
    """Why a connection was refused (``chat_connections_rejected_total{reason}``)."""

    CAPACITY = "capacity"  # --max-connections sessions are open
    OVERLOAD = "overload"  # sockets near the fd limit
    THREADS = "threads"  # no thread could be started (threaded server at its thread wall)
    HANDSHAKE = "handshake"  # the WebSocket layer refused the upgrade request


class DropReason(StrEnum):
    """Why a client frame was not acted on (``chat_messages_dropped_total{reason}``)."""

    RATE_LIMITED = "rate_limited"
    INVALID = "invalid"
    SLOW_CONSUMER = "slow_consumer"
    REJECTED = "rejected"  # a say the moderation service refused (common/screening.py)
    UNSCREENED = "unscreened"  # a say the moderation service failed to screen


class DisconnectReason(StrEnum):
    """Why a connection ended (``chat_disconnects_total{reason}``)."""

    CLIENT_CLOSE = "client_close"
    ERROR = "error"
    SLOW_CONSUMER = "slow_consumer"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"


class BrokerOperation(StrEnum):
    """Operations on the shared broker that can fail (``chat_broker_errors_total{operation}``).

    ``catch_up`` covers the position check and the history reads it leads to;
    ``subscribe`` only the subscription itself.
    """

    PUBLISH = "publish"
    JOIN = "join"
    PRESENCE = "presence"
    SUBSCRIBE = "subscribe"
    CATCH_UP = "catch_up"


class CloseFrame(Protocol):
    """A close frame's code, as websockets' ``Close`` has it."""

    @property
    def code(self) -> int: ...


def disconnect_reason(
    asked: DisconnectReason | None,
    *,
    shutting_down: bool,
    sent: CloseFrame | None,
    received: CloseFrame | None,
) -> DisconnectReason:
    """Why a connection ended, from the first of these that applies:

    1. the server asked for the close (``asked``: rate limit, slow consumer,
       a bug, a lost room): that reason;
    2. the server is shutting down: ``shutdown``;
    3. the server sent :data:`KEEPALIVE_TIMEOUT_CODE` and received no close
       frame: the peer missed a pong, ``timeout``;
    4. the peer closed with 1000 or 1001: ``client_close``;
    5. anything else (no close frame, another code): ``error``.

    ``sent`` and ``received`` are the close frames sent and received
    (``protocol.close_sent`` and ``close_rcvd`` in websockets), ``None``
    where there was none.
    """
    if asked is not None:
        return asked
    if shutting_down:
        return DisconnectReason.SHUTDOWN
    if received is None:
        timed_out = sent is not None and sent.code == KEEPALIVE_TIMEOUT_CODE
        return DisconnectReason.TIMEOUT if timed_out else DisconnectReason.ERROR
    if received.code in NORMAL_CLOSE_CODES:
        return DisconnectReason.CLIENT_CLOSE
    return DisconnectReason.ERROR
