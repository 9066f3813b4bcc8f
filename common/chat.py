"""The chat state machine shared by both servers, with no I/O.

Rules, in the order a connection meets them:

1. A connection starts *awaiting hello*. Any other message gets
   ``hello_required``; a valid ``hello`` moves it to *ready* and gets
   ``welcome``.
2. Every frame first costs a token from the connection's bucket. A frame with
   no token gets ``rate_limited``; ``flood_tolerance`` refused frames in a row
   close the connection with 1008.
3. A *ready* session may ``join``, ``leave``, ``say`` and ``ping``. ``say`` to
   a room it is not in gets ``not_joined``.
4. ``say`` gives the message its room's next seq and sends it to every member,
   sender included. Members receive a room's messages in seq order because
   the caller hands out each :class:`Outcome` in the order :class:`ChatCore`
   produced them (the threaded server holds one lock across ``receive`` and
   queuing; the asyncio server is single-threaded).
5. When the connection ends, :meth:`ChatCore.close` takes the session out of
   its rooms and tells the other members.

Usage, by a server's connection handler::

    session = core.open(connection)         # connection: the server's own object
    outcome = core.receive(session, frame)  # for each text frame
    for targets, payload in outcome.sends:  # send payload to each target's connection
        ...
    if outcome.close: ...                   # close with outcome.close.code
    outcome = core.close(session)           # when the connection ends; send as above

:class:`ChatCore` is not thread-safe: a threaded caller guards it with a lock.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from common import codec, messages
from common.broker import split_message
from common.errors import CloseCode, ErrorCode, ProtocolError
from common.limits import Limits
from common.ratelimit import TokenBucket
from common.reasons import DisconnectReason, DropReason
from common.rooms import Room, RoomRegistry


class SessionState(Enum):
    AWAITING_HELLO = "awaiting_hello"
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with ``code`` and ``reason`` (the close frame's, as in
    websockets' ``close(code, reason)``); ``disconnect`` is why, for metrics."""

    code: CloseCode
    reason: str
    disconnect: DisconnectReason


class Session:
    """One client's state. ``connection`` is the server's own object for it."""

    __slots__ = ("bucket", "connection", "id", "name", "refused", "rooms", "state")

    def __init__(self, connection: Any, bucket: TokenBucket) -> None:
        self.connection = connection
        self.bucket = bucket
        self.id = secrets.token_hex(8)
        self.name = ""
        self.state = SessionState.AWAITING_HELLO
        self.rooms: dict[str, Room[Session]] = {}
        self.refused = 0

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.name!r} {self.state.value}>"


@dataclass(slots=True)
class Outcome:
    """What the server must do after a frame or a close, in order.

    ``sends`` holds ``(targets, payload)`` pairs: send the encoded ``payload``
    as a text frame to every session of ``targets``. ``delivered`` counts the
    chat messages fanned out (a ``say`` to a room of 25 delivers 25).
    """

    sends: list[tuple[tuple[Session, ...], bytes]] = field(default_factory=list)
    close: Close | None = None
    dropped: DropReason | None = None
    delivered: int = 0
    # With a shared broker only (ChatCore(shared=True)): work for the server's
    # broker adapter, which does the I/O and calls back into the core.
    publish: PendingSay | None = None
    join: PendingJoin | None = None
    presence: list[PresenceChange] = field(default_factory=list)
    gap: Gap | None = None
    closes: list[tuple[Session, Close]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PendingSay:
    """Publish ``head + seq + tail`` to ``room`` (the broker assigns seq)."""

    session: Session
    room: str
    head: bytes
    tail: bytes
    ref: str | None


@dataclass(frozen=True, slots=True)
class PendingJoin:
    """Count ``session`` in ``room`` at the broker, fetch history, then complete_join()."""

    session: Session
    room: str
    since: int | None
    fetch_seq: bool  # the room has no local member yet: ask the broker for its seq


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of ``room`` after ``delivered`` and before ``received`` are missing here."""

    room: str
    delivered: int
    received: int


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """Change this process's member count of ``room`` by ``delta`` and tell everyone."""

    session: Session
    room: str
    delta: int


class ChatCore:
    """All sessions and rooms of one server process."""

    def __init__(
        self, implementation: str, limits: Limits | None = None, *, shared: bool = False
    ) -> None:
        """``shared=True`` when rooms are shared with other processes through a broker.

        Then ``say``, ``join`` and presence come back as broker work in the
        :class:`Outcome` (``publish``, ``join``, ``presence``) instead of
        sends, and messages reach members through :meth:`deliver`.
        """
        self.implementation = implementation
        self.shared = shared
        self.limits = limits or Limits()
        self.rooms: RoomRegistry[Session] = RoomRegistry(
            self.limits.history_size, self.limits.max_idle_rooms
        )
        self.sessions: set[Session] = set()

    # Connection lifecycle

    def open(self, connection: Any, now: float | None = None) -> Session:
        """Register a new connection; it must say ``hello`` first."""
        now = time.monotonic() if now is None else now
        session = Session(
            connection, TokenBucket(self.limits.messages_per_second, self.limits.burst, now)
        )
        self.sessions.add(session)
        return session

    def close(self, session: Session) -> Outcome:
        """Forget a connection that ended; tell the members of its rooms. Idempotent."""
        outcome = Outcome()
        if session.state is SessionState.CLOSED:
            return outcome
        session.state = SessionState.CLOSED
        self.sessions.discard(session)
        for room in list(session.rooms.values()):
            self._leave(session, room, outcome)
        return outcome

    # Frames

    def receive(self, session: Session, data: str | bytes, now: float | None = None) -> Outcome:
        """Handle one text frame from ``session``; never raises on bad input."""
        outcome = Outcome()
        if session.state is SessionState.CLOSED:
            return outcome
        now = time.monotonic() if now is None else now
        if not session.bucket.allow(now):
            session.refused += 1
            outcome.dropped = DropReason.RATE_LIMITED
            if session.refused > self.limits.flood_tolerance:
                outcome.close = Close(
                    CloseCode.POLICY_VIOLATION, "rate limit exceeded", DisconnectReason.RATE_LIMIT
                )
            else:
                self._error(session, outcome, ErrorCode.RATE_LIMITED, "slow down")
            return outcome
        session.refused = 0
        ref = None
        try:
            message, ref = messages.parse_client_message(data, self.limits)
            self._dispatch(session, message, outcome)
        except ProtocolError as exc:
            outcome.dropped = DropReason.INVALID
            self._error(session, outcome, exc.code, exc.message, exc.ref or ref)
        return outcome

    def receive_binary(self, session: Session) -> Outcome:
        """A binary frame: the protocol is text only, so close with 1003."""
        return Outcome(
            close=Close(CloseCode.UNSUPPORTED_DATA, "text frames only", DisconnectReason.ERROR),
            dropped=DropReason.INVALID,
        )

    # Shared rooms: called by a broker adapter once its I/O is done

    def complete_join(
        self,
        session: Session,
        pending: PendingJoin,
        *,
        seq: int,
        members: int,
        history: list[tuple[int, bytes]],
    ) -> Outcome:
        """Finish a join whose broker work (counting the member, history) is done.

        ``seq`` is the room's seq at the broker (used when the room is new to
        this process), ``members`` its member count across processes,
        ``history`` ``(seq, payload)`` pairs from the broker's history (only
        when ``since`` was given).
        """
        out = Outcome()
        if session.state is not SessionState.READY or pending.room in session.rooms:
            return out
        local = self.rooms.get(pending.room)
        fresh = local is None or not local.members
        room, _ = self.rooms.add_member(pending.room, session)
        session.rooms[room.name] = room
        if fresh:
            room.seq = max(room.seq, seq)
        replay: list[bytes] = []
        complete = True
        if pending.since is not None:
            known = dict(history)
            known.update(room.history)
            wanted = range(pending.since + 1, room.seq + 1)
            replay = [known[n] for n in wanted if n in known]
            complete = pending.since <= room.seq and len(replay) == len(wanted)
        self._reply(session, out, messages.joined_message(room.name, room.seq, members, complete))
        for payload in replay:
            out.sends.append(((session,), payload))
        return out

    def deliver(self, room_name: str, seq: int, payload: bytes) -> Outcome:
        """A message from the broker: send it to this process's members, in seq order.

        A seq already delivered is dropped; a seq beyond the next one sets
        ``outcome.gap`` and delivers nothing: fetch the missing messages from
        history and deliver them first.
        """
        out = Outcome()
        room = self.rooms.get(room_name)
        if room is None or not room.members or seq <= room.seq:
            return out
        if seq > room.seq + 1:
            out.gap = Gap(room_name, room.seq, seq)
            return out
        room.seq = seq
        room.history.append((seq, payload))
        members = tuple(room.members)
        out.sends.append((members, payload))
        out.delivered = len(members)
        return out

    def deliver_presence(self, room_name: str, origin: str, payload: bytes) -> Outcome:
        """A presence event from the broker, for every local member but its subject."""
        out = Outcome()
        room = self.rooms.get(room_name)
        if room is not None:
            others = tuple(member for member in room.members if member.id != origin)
            if others:
                out.sends.append((others, payload))
        return out

    def lose_room(self, room_name: str, seq: int, text: str) -> Outcome:
        """The broker can no longer give this room's missing messages: drop its members.

        Members must never see a silent gap: they are taken out of the room
        and closed; they reconnect and rejoin with ``since``, and learn from
        ``complete: false`` what is gone. The room restarts from ``seq``.
        """
        out = Outcome()
        room = self.rooms.get(room_name)
        if room is None:
            return out
        close = Close(CloseCode.TRY_AGAIN_LATER, text, DisconnectReason.ERROR)
        for member in list(room.members):
            member.rooms.pop(room_name, None)
            self.rooms.remove_member(room, member)
            out.closes.append((member, close))
            out.presence.append(PresenceChange(member, room_name, -1))
        room.seq = seq
        room.history.clear()
        return out

    def unavailable(self, session: Session, ref: str | None = None) -> Outcome:
        """The broker could not be reached: tell the client its message was not handled."""
        out = Outcome(dropped=DropReason.INVALID)
        self._error(session, out, ErrorCode.UNAVAILABLE, "chat service unavailable, retry", ref)
        return out

    def local_rooms(self) -> dict[str, int]:
        """Rooms with local members and the last seq delivered in each."""
        return {name: room.seq for name, room in self.rooms.items() if room.members}

    # Queries

    @property
    def connections(self) -> int:
        return len(self.sessions)

    @property
    def active_rooms(self) -> int:
        return self.rooms.active

    # Internals

    def _dispatch(self, session: Session, message: messages.ClientMessage, out: Outcome) -> None:
        if isinstance(message, messages.Hello):
            if session.state is not SessionState.AWAITING_HELLO:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "hello was already received")
            session.name = message.name
            session.state = SessionState.READY
            welcome = messages.welcome_message(
                session.id, session.name, self.implementation, self.limits
            )
            self._reply(session, out, welcome)
            return
        if session.state is not SessionState.READY:
            raise ProtocolError(ErrorCode.HELLO_REQUIRED, "send hello first")
        if isinstance(message, messages.Say):
            self._say(session, message, out)
        elif isinstance(message, messages.Join):
            self._join(session, message, out)
        elif isinstance(message, messages.Leave):
            room = session.rooms.get(message.room)
            if room is None:
                raise ProtocolError(ErrorCode.NOT_JOINED, "not a member of that room")
            self._reply(session, out, messages.left_message(room.name))
            self._leave(session, room, out)
        elif isinstance(message, messages.Ping):
            self._reply(session, out, messages.pong_message(message.t))

    def _say(self, session: Session, say: messages.Say, out: Outcome) -> None:
        room = session.rooms.get(say.room)
        if room is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, "join the room before saying something")
        ts = time.time()
        if self.shared:
            head, tail = split_message(messages.chat_message(room.name, 0, session.name, say, ts))
            out.publish = PendingSay(session, room.name, head, tail, say.id)
            return
        _, payload = room.append(
            lambda seq: codec.encode(messages.chat_message(room.name, seq, session.name, say, ts))
        )
        members = tuple(room.members)
        out.sends.append((members, payload))
        out.delivered += len(members)

    def _join(self, session: Session, join: messages.Join, out: Outcome) -> None:
        if (
            join.room not in session.rooms
            and len(session.rooms) >= self.limits.max_rooms_per_session
        ):
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                f"at most {self.limits.max_rooms_per_session} rooms per connection",
            )
        if self.shared and join.room not in session.rooms:
            local = self.rooms.get(join.room)
            fetch_seq = local is None or not local.members
            out.join = PendingJoin(session, join.room, join.since, fetch_seq)
            return
        room, is_new = self.rooms.add_member(join.room, session)
        session.rooms[room.name] = room
        replay: list[bytes] = []
        complete = True
        if join.since is not None:
            replay, complete = room.replay(join.since)
        self._reply(
            session, out, messages.joined_message(room.name, room.seq, len(room.members), complete)
        )
        for payload in replay:
            out.sends.append(((session,), payload))
        if is_new:
            self._presence(session, room, "join", out)

    def _leave(self, session: Session, room: Room[Session], out: Outcome) -> None:
        session.rooms.pop(room.name, None)
        self.rooms.remove_member(room, session)
        if self.shared:
            out.presence.append(PresenceChange(session, room.name, -1))
        elif room.members:
            self._presence(session, room, "leave", out)

    def _presence(self, session: Session, room: Room[Session], event: str, out: Outcome) -> None:
        others = tuple(member for member in room.members if member is not session)
        if others:
            presence = messages.presence_message(room.name, session.name, event, len(room.members))
            out.sends.append((others, codec.encode(presence)))

    def _reply(self, session: Session, out: Outcome, message: dict[str, Any]) -> None:
        out.sends.append(((session,), codec.encode(message)))

    def _error(
        self,
        session: Session,
        out: Outcome,
        code: ErrorCode,
        text: str,
        ref: str | None = None,
    ) -> None:
        self._reply(session, out, messages.error_message(code, text, ref))
