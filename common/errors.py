"""Error codes and close codes of the wire protocol.

Two kinds of failure reach a client:

* an ``error`` message (:class:`ErrorCode`), after which the connection stays
  open — the client sent something wrong but can go on;
* a close frame (:class:`CloseCode`), after which the connection ends.

:class:`ProtocolError` is how the parser and the session report the first kind.
Its message is written for the peer: it never carries internal details.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """Codes of ``{"type": "error"}`` messages; the connection stays open."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    HELLO_REQUIRED = "hello_required"
    NOT_JOINED = "not_joined"
    RATE_LIMITED = "rate_limited"
    TOO_LONG = "too_long"
    UNAVAILABLE = "unavailable"  # the shared broker (Redis) or the moderation service failed
    REJECTED = "rejected"  # the moderation service refused the message


class CloseCode(IntEnum):
    """WebSocket close codes the servers use (RFC 6455, section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown
    UNSUPPORTED_DATA = 1003  # binary frame
    INVALID_DATA = 1007  # invalid UTF-8 (raised by the websockets library)
    POLICY_VIOLATION = 1008  # persistent flooding after rate_limited errors
    MESSAGE_TOO_BIG = 1009  # frame over max_frame_bytes
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # server at capacity


class ProtocolError(Exception):
    """A client message that breaks the protocol but does not end the connection.

    ``ref`` is the offending message's ``id`` when it had a usable one, so the
    client can match the error to what it sent.
    """

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
