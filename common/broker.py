"""Rooms shared by several server processes through Redis: the protocol, no I/O.

One chat process keeps its rooms in memory (:class:`common.rooms.RoomRegistry`,
the default broker). Several processes share rooms through Redis; this module
holds everything about that which is not I/O, so the two servers' Redis
adapters (``threaded_server/broker.py`` on redis-py's blocking client,
``async_server/broker.py`` on its asyncio client) differ only in how they wait.

Design (see docs/scaling.md for the reasoning):

* **One authority for seq.** A Lua script (:data:`PUBLISH_SCRIPT`) runs
  ``INCR`` on the room's seq key, stores the message in the room's history
  (a sorted set scored by seq, trimmed to ``history_size``) and ``PUBLISH``es
  it, atomically. Redis runs scripts one at a time, so seq order is publish
  order: every process sees a room's messages in seq order.
* **Pub/sub is at-most-once**, so it is only the fast path. Each process
  subscribes to every room with one pattern subscription, tracks the last seq
  it delivered per local room (``ChatCore.deliver``), fetches any gap from the
  history, and checks the rooms' positions every ``position_check_interval``
  seconds to catch messages whose pub/sub delivery was lost (the approach of
  Centrifugo's Redis engine). When history no longer holds a gap, the room's
  local members are disconnected rather than silently skipped.
* **Presence** is a set of session ids per room and process, and a set of the
  processes with members per room. Adding or removing a session is
  idempotent, so an update that failed (Redis down, pool exhausted, an
  answer lost) is simply retried later, and counts come back right by
  themselves. A process's members only count while its liveness key exists,
  so a crashed process stops counting after :data:`PROCESS_TTL` seconds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlparse

from common import codec, messages

PREFIX = "twinchat"
PROCESS_TTL = 15  # seconds a process counts in presence without refreshing
POSITION_CHECK_INTERVAL = 1.0
# Presence removals that failed, kept per process to be resent (beyond this
# many, further ones are dropped and that room's count stays high).
MAX_UNSENT_PRESENCE = 100_000
TIMEOUT = 2.0  # seconds for any one Redis operation, or to get a pooled connection
# A join waits at most this long for a failed removal of the same member that
# is being resent (its add must land after the removal); then it goes ahead.
RESEND_WAIT = 2 * TIMEOUT
# A bounded pool that commands wait for: thousands of clients must queue for a
# few Redis connections, not open one each (Redis refuses past maxclients).
POOL_OPTIONS = {
    "max_connections": 128,
    "timeout": TIMEOUT,
    "socket_timeout": TIMEOUT,
    "socket_connect_timeout": TIMEOUT,
}


class BrokerUnavailable(Exception):
    """Redis could not be reached; the operation did not happen."""


def check_broker_url(url: str) -> str:
    """Validate a ``--broker`` value: ``memory`` or ``redis://host:port/db``."""
    if url == "memory":
        return url
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix") or not (parsed.hostname or parsed.path):
        raise ValueError(f"--broker must be 'memory' or redis://host:port/db, not {url!r}")
    return url


def new_process_id() -> str:
    return secrets.token_hex(6)


# Keys and channels


def seq_key(room: str) -> str:
    return f"{PREFIX}:room:{room}:seq"


def history_key(room: str) -> str:
    return f"{PREFIX}:room:{room}:history"


def processes_key(room: str) -> str:
    """The set of processes that have (or had) members in ``room``."""
    return f"{PREFIX}:room:{room}:processes"


def members_prefix(room: str) -> str:
    """Prefix of the per-process member sets of ``room`` (the process id follows)."""
    return f"{PREFIX}:room:{room}:members:"


def channel(room: str) -> str:
    return f"{PREFIX}:room:{room}"


CHANNEL_PATTERN = f"{PREFIX}:room:*"
_CHANNEL_PREFIX = f"{PREFIX}:room:"


def process_key(process_id: str) -> str:
    return f"{PREFIX}:process:{process_id}"


# Lua scripts: each runs atomically inside Redis.

PUBLISH_SCRIPT = """
local seq = redis.call('INCR', KEYS[1])
local payload = ARGV[1] .. seq .. ARGV[2]
redis.call('ZADD', KEYS[2], seq, payload)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PUBLISH', ARGV[4], 'm ' .. seq .. ' ' .. payload)
return seq
"""

# Mark process ARGV[1] alive for ARGV[8] seconds; add session ARGV[3] to (ARGV[2]
# = "+") or remove it from (ARGV[2] = "-") the process's member set of a room;
# count the room's members over live processes, dropping the sets of dead ones;
# if the set changed, announce it on channel ARGV[6] as ARGV[7] .. count ..
# ARGV[9]; return the count. Idempotent, so a failed update can be retried; one
# script, so a change is one round trip and counts are announced in order.
PRESENCE_SCRIPT = """
local process, members, alive = ARGV[1], ARGV[5], ARGV[4]
redis.call('SET', alive .. process, 1, 'EX', ARGV[8])
local changed
if ARGV[2] == '+' then
  changed = redis.call('SADD', members .. process, ARGV[3])
  redis.call('SADD', KEYS[1], process)
else
  changed = redis.call('SREM', members .. process, ARGV[3])
end
local total = 0
for _, other in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local count = 0
  if redis.call('EXISTS', alive .. other) == 1 then
    count = redis.call('SCARD', members .. other)
  else
    redis.call('DEL', members .. other)
  end
  if count == 0 then redis.call('SREM', KEYS[1], other) end
  total = total + count
end
if changed == 1 then
  redis.call('PUBLISH', ARGV[6], ARGV[7] .. total .. ARGV[9])
end
return total
"""


def publish_args(room: str, head: bytes, tail: bytes, history_size: int) -> tuple[list, list]:
    """KEYS and ARGV for :data:`PUBLISH_SCRIPT`."""
    return [seq_key(room), history_key(room)], [head, tail, history_size, channel(room)]


def presence_args(
    room: str, process_id: str, delta: int, origin: str, name: str
) -> tuple[list, list]:
    """KEYS and ARGV for :data:`PRESENCE_SCRIPT`: session ``origin`` (``name``)
    joined ``room`` (``delta`` > 0) or left it (``delta`` < 0)."""
    event = "join" if delta > 0 else "leave"
    encoded = codec.encode(messages.presence_message(room, name, event, 0))
    head, tail = encoded[: -len(b"0}")], b"}"  # "members" is the last key
    args = [
        process_id, "+" if delta > 0 else "-", origin, f"{PREFIX}:process:",
        members_prefix(room), channel(room), presence_envelope(origin, head), PROCESS_TTL, tail,
    ]  # fmt: skip
    return [processes_key(room)], args


def queue_join(
    pipe: Any,
    room: str,
    since: int | None,
    fetch_seq: bool,
    process_id: str,
    origin: str,
    name: str,
    presence_sha: str,
) -> None:
    """Queue one join's commands on a redis-py pipeline (blocking or asyncio: both
    queue the same way): the room's seq (``fetch_seq``: the room is new to this process),
    its history after ``since`` (when given), and the member's add (``EVALSHA``
    of :data:`PRESENCE_SCRIPT`, whose SHA1 is ``presence_sha``).
    :func:`parse_join_replies` reads the answers."""
    if fetch_seq:
        pipe.get(seq_key(room))
    if since is not None:
        pipe.zrangebyscore(history_key(room), since + 1, "+inf", withscores=True)
    keys, args = presence_args(room, process_id, +1, origin, name)
    pipe.evalsha(presence_sha, len(keys), *keys, *args)


def parse_join_replies(
    replies: list, since: int | None, fetch_seq: bool
) -> tuple[int, list[tuple[int, bytes]], int]:
    """``(seq, history, members)`` from the answers to :func:`queue_join`:
    seq is 0 unless ``fetch_seq``; history holds ``(seq, payload)`` pairs."""
    answers = iter(replies)
    seq = int(next(answers) or 0) if fetch_seq else 0
    entries = next(answers) if since is not None else []  # (payload, score) pairs
    history = [(int(score), payload) for payload, score in entries]
    return seq, history, int(next(answers))


def split_message(message: dict[str, Any]) -> tuple[bytes, bytes]:
    """Encode a chat message around its seq, which Redis fills in.

    ``message`` must have ``"seq"`` as its third key (as
    :func:`common.messages.chat_message` builds it); the result joins as
    ``head + str(seq) + tail``.
    """
    encoded = codec.encode({**message, "seq": 0})
    marker = b',"seq":0,'
    cut = encoded.index(marker) + len(marker) - 2
    return encoded[:cut], encoded[cut + 1 :]


# Pub/sub envelopes: "m <seq> <payload>" for messages, "p <session> <payload>"
# for presence (the session it is about does not receive it).


class Kind(Enum):
    MESSAGE = b"m"
    PRESENCE = b"p"


@dataclass(frozen=True, slots=True)
class Envelope:
    room: str
    kind: Kind
    seq: int  # messages only
    origin: str  # presence only: the session the event is about
    payload: bytes


def presence_envelope(origin: str, payload: bytes) -> bytes:
    return b"p " + origin.encode() + b" " + payload


def parse_envelope(channel_name: str | bytes, data: bytes) -> Envelope | None:
    """Decode a pub/sub message; ``None`` for anything that is not ours."""
    if isinstance(channel_name, bytes):
        channel_name = channel_name.decode(errors="replace")
    if not channel_name.startswith(_CHANNEL_PREFIX):
        return None
    room = channel_name[len(_CHANNEL_PREFIX) :]
    kind, _, rest = data.partition(b" ")
    field_, _, payload = rest.partition(b" ")
    try:
        if kind == b"m":
            return Envelope(room, Kind.MESSAGE, int(field_), "", payload)
        if kind == b"p":
            return Envelope(room, Kind.PRESENCE, 0, field_.decode(), payload)
    except ValueError:
        pass
    return None
