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
4. With screening on (:mod:`common.screening`), a valid ``say`` first waits
   for its verdict: ``receive`` returns it as ``Outcome.screen``, and
   :meth:`ChatCore.complete_screen` takes the verdict back (rules there).
5. ``say`` gives the message its room's next seq and sends it to every member,
   sender included. Members receive a room's messages in seq order because
   the caller hands out each :class:`Outcome` in the order :class:`ChatCore`
   produced them (the threaded server holds one lock across ``receive`` and
   queuing; the asyncio server is single-threaded).
6. When the connection ends, :meth:`ChatCore.close` takes the session out of
   its rooms and tells the other members.

Usage, by a server's connection handler::

    session = core.open(connection)         # connection: the server's own object
    outcome = core.receive(session, frame)  # for each text frame
    for targets, payload in outcome.sends:  # send payload to each target's connection
        ...
    if outcome.close: ...                   # close with outcome.close.code
    outcome = core.close(session)           # when the connection ends; send as above

:class:`ChatCore` is not thread-safe: a threaded caller guards it with a lock.
Rooms shared with other processes through a broker are the subclass
:class:`common.shared.SharedChatCore`; this module knows nothing of them.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from common import codec, messages
from common.errors import CloseCode, ErrorCode, ProtocolError
from common.limits import Limits
from common.ratelimit import TokenBucket
from common.reasons import DisconnectReason, DropReason
from common.rooms import Room, RoomRegistry
from common.screening import PendingScreen, Verdict


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
    # Other sessions to close, each with its Close.
    closes: list[tuple[Session, Close]] = field(default_factory=list)
    # A say waiting for screening: run it, then call ChatCore.complete_screen.
    screen: PendingScreen | None = None


class ChatCore:
    """All sessions and rooms of one server process."""

    outcome_type: type[Outcome] = Outcome

    def __init__(
        self, implementation: str, limits: Limits | None = None, *, screening: bool = False
    ) -> None:
        """``screening``: hand every valid say back for screening first (common/screening.py)."""
        self.implementation = implementation
        self.limits = limits or Limits()
        self.screening = screening
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
        outcome = self.outcome_type()
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
        outcome = self.outcome_type()
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

    def complete_screen(
        self, session: Session, pending: PendingScreen, verdict: Verdict
    ) -> Outcome:
        """Finish a say that screening has judged: publish it, or answer the sender.

        Rules in :mod:`common.screening`: ``allow`` publishes; ``reject`` answers
        ``rejected``, ``failed`` answers ``unavailable`` (not published).
        """
        outcome = self.outcome_type()
        if session.state is SessionState.CLOSED:
            return outcome
        say = pending.say
        if verdict is Verdict.ALLOW:
            room = session.rooms.get(pending.room)
            if room is None:
                self._error(session, outcome, ErrorCode.NOT_JOINED, "left the room", say.id)
            else:
                self._publish(session, room, say, time.time(), outcome)
        elif verdict is Verdict.REJECT:
            outcome.dropped = DropReason.REJECTED
            self._error(session, outcome, ErrorCode.REJECTED, "refused by moderation", say.id)
        else:
            outcome.dropped = DropReason.UNSCREENED
            self._error(
                session, outcome, ErrorCode.UNAVAILABLE,
                "moderation did not answer; the message was not sent", say.id,
            )  # fmt: skip
        return outcome

    def receive_binary(self, session: Session) -> Outcome:
        """A binary frame: the protocol is text only, so close with 1003."""
        return self.outcome_type(
            close=Close(CloseCode.UNSUPPORTED_DATA, "text frames only", DisconnectReason.ERROR),
            dropped=DropReason.INVALID,
        )

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
        if self.screening:
            out.screen = PendingScreen(room.name, say)
            return
        self._publish(session, room, say, time.time(), out)

    def _publish(
        self, session: Session, room: Room[Session], say: messages.Say, ts: float, out: Outcome
    ) -> None:
        """Give the message the room's next seq and send it to every member."""
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
        self._enter(session, join, out)

    def _enter(self, session: Session, join: messages.Join, out: Outcome) -> None:
        """Make ``session`` a member; answer ``joined``, replay, tell the others."""
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
        self._left(session, room, out)

    def _left(self, session: Session, room: Room[Session], out: Outcome) -> None:
        """``session`` left ``room``: tell the members still in it."""
        if room.members:
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
