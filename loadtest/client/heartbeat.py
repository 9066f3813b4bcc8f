"""The application pings of a Locust process's idle clients, sent from gevent's hub.

An idle user that pinged from its own greenlet woke every 20-30 s for one small
frame: a gevent timer, two greenlet switches and Locust's task loop, most of
the ~190 µs of Locust CPU that each ping cost with 20,000 idle users (py-spy,
2026-12-03). Here a client put on :meth:`Heartbeat.keep_pinging` gets a libev
timer of gevent's loop instead, whose callback runs in the hub: it sends the
``ping`` the way the receive path sends a pong (at once when nothing else is
sending on that connection; never waiting in the hub) and sets the next timer.
The pong is timed by the receive path, as every ``ping``.

Each ping goes out at its own time, as from independent clients. Sending the
due pings together from one periodic timer would be cheaper still, but it
would hand the server bursts that real clients never send: with 20,000 idle
users, 0.1 s batches cut the async server's CPU at rest from 0.2 to 0.07 cores
(2026-12-03), a saving the load generator made, not the server.

A registration lasts as long as the connection it was made on: a client that
reconnects registers again (``ChatClient.keep_pinging``).
"""

from __future__ import annotations

import logging
import random
from typing import Protocol

import gevent

logger = logging.getLogger(__name__)


class Pinged(Protocol):
    def ping_from_hub(self, connection: object) -> bool:
        """Send a ping on ``connection`` if it is still this client's open connection;
        False once it is not (the heartbeat then forgets it). Must not block."""


class Heartbeat:
    """The pings of one process's idle clients. Not thread-safe: gevent only."""

    def __init__(self) -> None:
        self._timers: set = set()  # armed timers, one per registered connection

    def __len__(self) -> int:
        """Connections waiting for their next ping (ended ones included, until it is due)."""
        return len(self._timers)

    def keep_pinging(self, client: Pinged, connection: object, every: tuple[float, float]) -> None:
        """Ping ``client`` on ``connection`` every ``random.uniform(*every)`` seconds, the
        first time within ``every[1]`` s (users started together spread out at once)."""
        self._arm(random.uniform(0, every[1]), client, connection, every)

    def stop(self) -> None:
        for timer in self._timers:
            timer.stop()
        self._timers.clear()

    def _arm(self, delay: float, client: Pinged, connection: object, every: tuple) -> None:
        # ref=False: pending pings alone do not keep gevent's loop alive.
        timer = gevent.get_hub().loop.timer(delay, 0.0, ref=False)
        self._timers.add(timer)
        timer.start(self._fire, timer, client, connection, every)

    def _fire(self, timer, client: Pinged, connection: object, every: tuple) -> None:
        self._timers.discard(timer)
        try:
            still_open = client.ping_from_hub(connection)
        except Exception:
            logger.exception("heartbeat ping failed")
            return
        if still_open:
            self._arm(random.uniform(*every), client, connection, every)
