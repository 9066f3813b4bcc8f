"""Rooms shared with other processes through a broker: the chat core's scale-out half.

:class:`SharedChatCore` is a :class:`~common.chat.ChatCore` whose rooms live
at a broker (Redis) as well as in this process. It changes three things and
adds the entry points a broker adapter calls back:

* ``say`` does not number the message: it comes back as
  :attr:`SharedOutcome.publish` (the broker gives the seq), and the message
  reaches local members through :meth:`SharedChatCore.deliver`, in seq order;
* joining a room this session is not in comes back as
  :attr:`SharedOutcome.join` (the broker counts the member and holds the
  history), finished by :meth:`SharedChatCore.complete_join`;
* leaving comes back as a :class:`PresenceChange` for the broker to count and
  announce, instead of presence sent here.

Each server's broker adapter (``threaded_server/broker.py``,
``async_server/broker.py``) does that I/O and calls back into the core under
the same rules as a client frame: one caller at a time, the outcome delivered
before the next call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import messages
from common.broker import split_message
from common.chat import ChatCore, Close, Outcome, Session, SessionState
from common.errors import CloseCode, ErrorCode
from common.reasons import DisconnectReason, DropReason
from common.rooms import Room


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


@dataclass(slots=True)
class SharedOutcome(Outcome):
    """An :class:`~common.chat.Outcome` with work for the broker adapter, which does
    the I/O and calls back into the core."""

    publish: PendingSay | None = None
    join: PendingJoin | None = None
    presence: list[PresenceChange] = field(default_factory=list)
    gap: Gap | None = None


class SharedChatCore(ChatCore):
    """All sessions of one server process, in rooms shared through a broker."""

    outcome_type = SharedOutcome

    # Hooks of ChatCore: the broker numbers, counts and announces

    def _publish(
        self,
        session: Session,
        room: Room[Session],
        say: messages.Say,
        ts: float,
        out: Outcome,
    ) -> None:
        assert isinstance(out, SharedOutcome)
        head, tail = split_message(messages.chat_message(room.name, 0, session.name, say, ts))
        out.publish = PendingSay(session, room.name, head, tail, say.id)

    def _enter(self, session: Session, join: messages.Join, out: Outcome) -> None:
        if join.room in session.rooms:  # already a member: answer as the in-memory core does
            super()._enter(session, join, out)
            return
        assert isinstance(out, SharedOutcome)
        local = self.rooms.get(join.room)
        fetch_seq = local is None or not local.members
        out.join = PendingJoin(session, join.room, join.since, fetch_seq)

    def _left(self, session: Session, room: Room[Session], out: Outcome) -> None:
        assert isinstance(out, SharedOutcome)
        out.presence.append(PresenceChange(session, room.name, -1))

    # Called by the broker adapter once its I/O is done

    def complete_join(
        self,
        session: Session,
        pending: PendingJoin,
        *,
        seq: int,
        members: int,
        history: list[tuple[int, bytes]],
    ) -> SharedOutcome:
        """Finish a join whose broker work (counting the member, history) is done.

        ``seq`` is the room's seq at the broker (used when the room is new to
        this process), ``members`` its member count across processes,
        ``history`` ``(seq, payload)`` pairs from the broker's history (only
        when ``since`` was given).
        """
        out = SharedOutcome()
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

    def deliver(self, room_name: str, seq: int, payload: bytes) -> SharedOutcome:
        """A message from the broker: send it to this process's members, in seq order.

        A seq already delivered is dropped; a seq beyond the next one sets
        ``outcome.gap`` and delivers nothing: fetch the missing messages from
        history and deliver them first.
        """
        out = SharedOutcome()
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

    def deliver_presence(self, room_name: str, origin: str, payload: bytes) -> SharedOutcome:
        """A presence event from the broker, for every local member but its subject."""
        out = SharedOutcome()
        room = self.rooms.get(room_name)
        if room is not None:
            others = tuple(member for member in room.members if member.id != origin)
            if others:
                out.sends.append((others, payload))
        return out

    def lose_room(self, room_name: str, seq: int, text: str) -> SharedOutcome:
        """The broker can no longer give this room's missing messages: drop its members.

        Members must never see a silent gap: they are taken out of the room
        and closed; they reconnect and rejoin with ``since``, and learn from
        ``complete: false`` what is gone. The room restarts from ``seq``.
        """
        out = SharedOutcome()
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

    def unavailable(self, session: Session, ref: str | None = None) -> SharedOutcome:
        """The broker could not be reached: tell the client its message was not handled."""
        out = SharedOutcome(dropped=DropReason.INVALID)
        self._error(session, out, ErrorCode.UNAVAILABLE, "chat service unavailable, retry", ref)
        return out

    def local_rooms(self) -> dict[str, int]:
        """Rooms with local members and the last seq delivered in each."""
        return {name: room.seq for name, room in self.rooms.items() if room.members}

    def local_seq(self, name: str) -> int | None:
        """The last seq delivered in room ``name``, or None when it has no local member
        (one room's entry of :meth:`local_rooms`, without building them all)."""
        room = self.rooms.get(name)
        return room.seq if room is not None and room.members else None
