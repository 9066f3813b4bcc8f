"""Client messages (parsed and validated) and server messages (built).

:func:`parse_client_message` turns one text frame into one of the frozen
dataclasses below, or raises :class:`~common.errors.ProtocolError`. It never
raises anything else, whatever the input: that is tested with Hypothesis.

Server messages are built by the ``*_message`` functions as plain dicts and
encoded once by :func:`common.codec.encode`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from common import codec
from common.errors import ErrorCode, ProtocolError
from common.limits import Limits

PROTOCOL_VERSION = 1
ROOM_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")  # and at most Limits.max_room_chars


@dataclass(frozen=True, slots=True)
class Hello:
    name: str


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: int | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str


@dataclass(frozen=True, slots=True)
class Say:
    room: str
    text: str
    id: str | None = None
    sent_at: int | float | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    t: Any = None


ClientMessage = Hello | Join | Leave | Say | Ping


def parse_client_message(data: str | bytes, limits: Limits) -> tuple[ClientMessage, str | None]:
    """Decode and validate one client frame; return the message and its ``ref``.

    ``ref`` is the message's ``id`` when it had a usable one (any type of
    message may carry one), for errors about it. Raises
    :class:`ProtocolError` with the code the protocol specifies for every
    kind of bad input, with ``ref`` set the same way.
    """
    try:
        obj = codec.decode(data)
    except (codec.DecodeError, UnicodeDecodeError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message must be a JSON object")
    raw_id = obj.get("id")
    ref = raw_id if isinstance(raw_id, str) and len(raw_id) <= limits.max_id_chars else None
    kind = obj.get("type")
    if kind is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "missing field: type", ref)
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "unknown message type", ref)
    try:
        return parser(obj, limits), ref
    except ProtocolError as exc:
        exc.ref = ref
        raise


def _bad(message: str, code: ErrorCode = ErrorCode.BAD_MESSAGE) -> ProtocolError:
    return ProtocolError(code, message)


def _room(obj: dict[str, Any], limits: Limits) -> str:
    room = obj.get("room")
    if not isinstance(room, str):
        raise _bad("room must be a string")
    if len(room) > limits.max_room_chars or not ROOM_PATTERN.fullmatch(room):
        raise _bad(f"room must be 1-{limits.max_room_chars} characters among A-Z a-z 0-9 _ . -")
    return room


def _parse_hello(obj: dict[str, Any], limits: Limits) -> Hello:
    name = obj.get("name")
    if not isinstance(name, str):
        raise _bad("name must be a string")
    if not 1 <= len(name) <= limits.max_name_chars or not name.isprintable():
        raise _bad(f"name must be 1-{limits.max_name_chars} printable characters")
    return Hello(name)


def _parse_join(obj: dict[str, Any], limits: Limits) -> Join:
    room = _room(obj, limits)
    since = obj.get("since")
    if since is not None and (type(since) is not int or since < 0):
        raise _bad("since must be a non-negative integer")
    return Join(room, since)


def _parse_leave(obj: dict[str, Any], limits: Limits) -> Leave:
    return Leave(_room(obj, limits))


def _parse_say(obj: dict[str, Any], limits: Limits) -> Say:
    room = _room(obj, limits)
    text = obj.get("text")
    if not isinstance(text, str):
        raise _bad("text must be a string")
    if not text:
        raise _bad("text must not be empty")
    if len(text) > limits.max_text_chars:
        raise _bad(f"text is over {limits.max_text_chars} characters", ErrorCode.TOO_LONG)
    msg_id = obj.get("id")
    if msg_id is not None and (not isinstance(msg_id, str) or len(msg_id) > limits.max_id_chars):
        raise _bad(f"id must be a string of at most {limits.max_id_chars} characters")
    sent_at = obj.get("sent_at")
    if sent_at is not None and (isinstance(sent_at, bool) or not isinstance(sent_at, int | float)):
        raise _bad("sent_at must be a number")
    return Say(room, text, msg_id, sent_at)


def _parse_ping(obj: dict[str, Any], limits: Limits) -> Ping:
    t = obj.get("t")
    if t is not None and not (
        (isinstance(t, int | float) and not isinstance(t, bool))
        or (isinstance(t, str) and len(t) <= limits.max_id_chars)
    ):
        raise _bad(f"t must be a number or a string of at most {limits.max_id_chars} characters")
    return Ping(t)


_PARSERS = {
    "hello": _parse_hello,
    "join": _parse_join,
    "leave": _parse_leave,
    "say": _parse_say,
    "ping": _parse_ping,
}


# Server messages


def welcome_message(session: str, name: str, implementation: str, limits: Limits) -> dict[str, Any]:
    return {
        "type": "welcome",
        "session": session,
        "name": name,
        "implementation": implementation,
        "protocol": PROTOCOL_VERSION,
        "limits": limits.for_client(),
    }


def joined_message(room: str, seq: int, members: int, complete: bool) -> dict[str, Any]:
    return {"type": "joined", "room": room, "seq": seq, "members": members, "complete": complete}


def left_message(room: str) -> dict[str, Any]:
    return {"type": "left", "room": room}


def presence_message(room: str, name: str, event: str, members: int) -> dict[str, Any]:
    return {"type": "presence", "room": room, "name": name, "event": event, "members": members}


def chat_message(room: str, seq: int, sender: str, say: Say, ts: float) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "message",
        "room": room,
        "seq": seq,
        "from": sender,
        "text": say.text,
        "ts": ts,
    }
    if say.id is not None:
        message["id"] = say.id
    if say.sent_at is not None:
        message["sent_at"] = say.sent_at
    return message


def pong_message(t: Any) -> dict[str, Any]:
    return {"type": "pong"} if t is None else {"type": "pong", "t": t}


def error_message(code: ErrorCode, text: str, ref: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "error", "code": str(code), "message": text}
    if ref is not None:
        message["ref"] = ref
    return message
