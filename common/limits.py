"""Limits shared by both servers, with their defaults.

The fields a client needs to behave (:meth:`Limits.for_client`) are sent in
the ``welcome`` message.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may do and what the server keeps.

    All sizes are bytes, all rates per second, all durations seconds.
    """

    # Messages
    max_frame_bytes: int = 64 * KIB
    max_text_chars: int = 4096
    max_name_chars: int = 32
    max_room_chars: int = 64
    max_id_chars: int = 64
    max_rooms_per_session: int = 100

    # Rate limiting: a token bucket per connection.
    messages_per_second: float = 20.0
    burst: int = 40
    # Messages refused in a row with rate_limited before the connection is
    # closed with 1008.
    flood_tolerance: int = 40

    # Rooms
    history_size: int = 100
    # Rooms nobody is in keep their seq and history for a reconnect with
    # ``since``; at most this many are kept, least recently used first out.
    max_idle_rooms: int = 1000

    # Slow consumers: a client whose unsent backlog passes this is dropped.
    max_backlog_bytes: int = 1 * MIB

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes", "max_text_chars", "max_name_chars", "max_room_chars",
            "max_id_chars", "burst", "history_size",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.messages_per_second <= 0:
            raise ValueError("messages_per_second must be positive")

    def for_client(self) -> dict[str, int | float]:
        """The limits announced in ``welcome.limits``."""
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "max_text_chars": self.max_text_chars,
            "messages_per_second": self.messages_per_second,
            "burst": self.burst,
            "history_size": self.history_size,
        }
