"""One client connection of the asyncio server, and the keepalive of them all.

:class:`ChatConnection` is websockets' ``ServerConnection`` plus a
:class:`~common.keepalive.Liveness`: when anything last arrived from the
client. websockets would run a keepalive task per connection (a sleep, a
ping, a timeout for its pong: a timer and a task wake-up per ping); the server
turns that off (``ping_interval=None``) and :func:`keep_alive` checks every
connection from one task instead, by the policy both servers share
(``common/keepalive.py``): a ping only after ``ping_interval`` seconds in
which the client sent nothing. The threaded server applies the same policy in
each connection's own thread (``threaded_server/connection.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from websockets.asyncio.server import Server, ServerConnection
from websockets.protocol import OPEN

from common.keepalive import Action, Keepalive, Liveness

logger = logging.getLogger("twinchat.async")


class ChatConnection(ServerConnection):
    """websockets' server connection that notes when its client was last heard from."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.liveness = Liveness(self.loop.time())

    def data_received(self, data: bytes) -> None:
        self.liveness.heard(self.loop.time())
        super().data_received(data)


async def keep_alive(
    server: Server, keepalive: Keepalive, give_up: Callable[[ChatConnection], None]
) -> None:
    """Every ``keepalive.tick`` seconds, ping the open connections that have been silent
    for the ping interval and hand those that missed their pong to ``give_up``. Runs
    until cancelled; never awaits between two connections."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(keepalive.tick)
        now = loop.time()
        for connection in server.all_connections:
            if connection.protocol.state is not OPEN:
                continue
            action = keepalive.check(connection.liveness, now)
            if action is Action.PING:
                try:  # as websockets.broadcast writes: into the buffer, no waiting
                    connection.protocol.send_ping(os.urandom(4))
                    connection.send_data()
                except Exception as exc:  # the connection is going: its handler sees it
                    logger.debug("keepalive ping to %s failed: %s", connection.id, exc)
            elif action is Action.GIVE_UP:
                give_up(connection)
