"""Rooms: members, the per-room sequence number and the bounded history.

A room's ``seq`` is the seq of its last message (0 before the first); every
message takes ``seq + 1``, so seq numbers have no gaps and no duplicates.
The history keeps the last ``history_size`` messages, already encoded, so a
replay sends the very bytes the members received.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

M = TypeVar("M", bound=Hashable)


class Room(Generic[M]):
    """One chat room. Members are kept in join order."""

    __slots__ = ("history", "members", "name", "seq")

    def __init__(self, name: str, history_size: int) -> None:
        self.name = name
        self.seq = 0
        self.members: dict[M, None] = {}
        self.history: deque[tuple[int, bytes]] = deque(maxlen=history_size)

    def append(self, payload_for_seq) -> tuple[int, bytes]:
        """Give the next message its seq, build it and keep it in history.

        ``payload_for_seq(seq) -> bytes`` builds the encoded message.
        """
        self.seq += 1
        payload = payload_for_seq(self.seq)
        self.history.append((self.seq, payload))
        return self.seq, payload

    def replay(self, since: int) -> tuple[list[bytes], bool]:
        """Return the retained messages with seq > ``since`` and whether that is all of them.

        Not complete when history has dropped messages after ``since``, or
        when ``since`` is beyond this room's seq (the room was forgotten or the
        server restarted since the client last saw it).
        """
        if since > self.seq:
            return [], False
        payloads = [payload for seq, payload in self.history if seq > since]
        oldest = self.history[0][0] if self.history else self.seq + 1
        complete = since >= oldest - 1
        return payloads, complete


class RoomRegistry(Generic[M]):
    """All rooms, and the idle ones kept for replay.

    A room nobody is in keeps its seq and history, so a client that
    reconnects can still ask for what it missed. At most ``max_idle`` idle
    rooms are kept; past that the one idle longest is forgotten.
    """

    def __init__(self, history_size: int, max_idle: int) -> None:
        self.history_size = history_size
        self.max_idle = max_idle
        self._rooms: dict[str, Room[M]] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rooms)

    @property
    def active(self) -> int:
        """Rooms with at least one member."""
        return len(self._rooms) - len(self._idle)

    def get(self, name: str) -> Room[M] | None:
        return self._rooms.get(name)

    def items(self):
        return self._rooms.items()

    def add_member(self, name: str, member: M) -> tuple[Room[M], bool]:
        """Put ``member`` in room ``name`` (created if needed); return it and whether it is new."""
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name, self.history_size)
        self._idle.pop(name, None)
        if member in room.members:
            return room, False
        room.members[member] = None
        return room, True

    def remove_member(self, room: Room[M], member: M) -> None:
        """Take ``member`` out of ``room``; an emptied room becomes idle."""
        room.members.pop(member, None)
        if not room.members:
            self._idle[room.name] = None
            while len(self._idle) > self.max_idle:
                oldest, _ = self._idle.popitem(last=False)
                del self._rooms[oldest]
