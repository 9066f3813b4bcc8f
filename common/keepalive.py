"""When to ping a client and when to give up on it: the keepalive policy of both servers.

A WebSocket ping proves that a silent peer is still there. A peer that sent
something recently has already proved it, so a ping is sent only after
``interval`` seconds in which nothing arrived from the client (gRPC's
keepalive works the same way). After a ping, the client has ``timeout``
seconds to send anything (its pong, usually); then the server closes the
connection with :data:`common.reasons.KEEPALIVE_TIMEOUT_CODE` and its reason
(as websockets does), which ``chat_disconnects_total`` counts as ``timeout``.

A chat client that sends an application ``ping`` more often than
``interval`` (the c100k profile's idle users, pinging every 20-30 s with the
interval at 30 s) therefore never gets a WebSocket ping: at 100,000 idle
connections that halves the frames a server and its clients handle at rest.

The servers differ only in who asks: each threaded connection checks its own
:class:`Liveness` between reads (:meth:`Keepalive.wait` is its read timeout);
the asyncio server checks every connection once per :attr:`Keepalive.tick`
from one task, instead of one timer and one task per connection.
"""

from __future__ import annotations

import math
from enum import Enum


class Action(Enum):
    NOTHING = "nothing"
    PING = "ping"
    GIVE_UP = "give up"


class Liveness:
    """What a server knows of one peer: when anything last arrived, and an unanswered ping."""

    __slots__ = ("given_up", "heard_at", "pinged_at")

    def __init__(self, now: float) -> None:
        self.heard_at = now
        self.pinged_at: float | None = None  # a ping sent after heard_at
        self.given_up = False  # GIVE_UP was answered once: the server is closing it

    def heard(self, now: float) -> None:
        """Something arrived from the peer (any frame, or part of one) at ``now``."""
        self.heard_at = now
        self.pinged_at = None


class Keepalive:
    """The policy for ``interval`` and ``timeout`` in seconds (None: no pings, or no limit).

    Times are from one monotonic clock, the caller's.
    """

    def __init__(self, interval: float | None, timeout: float | None) -> None:
        self.interval = interval
        self.timeout = timeout

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    @property
    def tick(self) -> float:
        """How often a server that checks every peer at once should check: often enough
        that a ping or a give-up comes at most a quarter of its period late (5 s with the
        20 s defaults). A check costs ~1 µs per peer: every second, it was 12 % of the
        asyncio server's CPU with 10,000 idle clients per process (2026-12-03)."""
        periods = [p for p in (self.interval, self.timeout) if p is not None]
        return min(p / 4 for p in periods) if periods else math.inf

    def check(self, peer: Liveness, now: float) -> Action:
        """What to do with ``peer`` at ``now``. A :attr:`Action.PING` is recorded as sent;
        :attr:`Action.GIVE_UP` is answered once per peer."""
        interval = self.interval
        if interval is None or peer.given_up:
            return Action.NOTHING
        pinged_at = peer.pinged_at
        if pinged_at is not None:
            if self.timeout is not None:
                if now - pinged_at < self.timeout:
                    return Action.NOTHING
                peer.given_up = True
                return Action.GIVE_UP
            if now - pinged_at < interval:  # no limit: ping again after another interval
                return Action.NOTHING
        elif now - peer.heard_at < interval:
            return Action.NOTHING
        peer.pinged_at = now
        return Action.PING

    def wait(self, peer: Liveness, now: float) -> float:
        """Seconds from ``now`` until :meth:`check` may answer something else (>= 0;
        ``math.inf`` without pings), unless the peer is heard from meanwhile."""
        interval = self.interval
        if interval is None or peer.given_up:
            return math.inf
        if peer.pinged_at is None:
            due = peer.heard_at + interval
        else:
            due = peer.pinged_at + (self.timeout if self.timeout is not None else interval)
        return max(0.0, due - now)
