"""Locust users that speak the twinchat protocol: settings, the abstract user, the scenarios.

Shaped like Locust's ``HttpUser``: the abstract :class:`ChatProtocolUser`
holds the scenario settings and ``self.client``, a
:class:`~loadtest.client.chat.ChatClient` that owns the connection, its receive
path, the seq checks and every request event (names and meaning in
``loadtest/client/chat.py`` and ``docs/loadtest.md``). The scenario users
(``IdleUser``, ``ChatUser``, ``BroadcastUser``, ``ChurnUser``) only hold
tasks and a wait time.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import gevent
from locust import User, task

from loadtest.client import transport
from loadtest.client.chat import ChatClient


@dataclass(frozen=True)
class Settings:
    """Scenario settings, read once per user from Locust's parsed options."""

    # Rooms
    room_size: int = 25
    rooms: int = 4
    speakers: int = 1
    room_prefix: str = "lt"
    # Pacing (seconds)
    say_every: float = 5.0
    ping_every: float = 20.0
    session_messages: int = 3
    churn_wait: float = 1.0
    # Messages
    text_size: int = 40
    # Sockets
    source_address: str = ""  # base address; process k binds base + k
    # Timeouts (seconds)
    ws_timeout: float = 10.0
    close_timeout: float = 2.0

    @classmethod
    def from_options(cls, options) -> Settings:
        """Build settings from a parsed-options namespace (missing options keep defaults)."""
        values = {name: getattr(options, name, None) for name in cls.__dataclass_fields__}
        return cls(**{name: value for name, value in values.items() if value is not None})


def websocket_url(host: str | None) -> str:
    """Turn Locust's ``--host`` into the chat endpoint URL.

    ``http(s)://`` becomes ``ws(s)://`` and an empty path becomes ``/ws``, so
    ``-H http://127.0.0.1:8002`` and ``-H ws://127.0.0.1:8002/ws`` are the same.
    """
    if not host:
        raise ValueError("no host: pass -H ws://127.0.0.1:PORT/ws (or set host in locust.conf)")
    if "://" not in host:
        host = "ws://" + host
    parts = urlsplit(host)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def worker_index(environment) -> int:
    """Index of this load-generator process (0 when not distributed)."""
    runner = getattr(environment, "runner", None)
    index = getattr(runner, "worker_index", 0)
    return index if isinstance(index, int) and index >= 0 else 0


_user_numbers = itertools.count()


class ChatProtocolUser(User):
    """Abstract chat user: scenario settings, a chat name, a room and ``self.client``.

    ``on_start`` connects and joins the room; ``on_stop`` closes cleanly. A
    connection the server drops is reported by the client (``close``) and
    the user reconnects and rejoins at its next task (``ensure_joined``).
    """

    abstract = True

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.settings = Settings.from_options(environment.parsed_options)
        self.number = next(_user_numbers)
        self.worker = worker_index(environment)
        if self.settings.source_address:
            transport.bind_source(transport.source_for(self.settings.source_address, self.worker))
        # Names are unique per load-generator process and worker (max 32 chars).
        self.chat_name = f"{self.settings.room_prefix}{self.worker}-{self.number}"[:32]
        self.room = self.choose_room()
        self.text = ("lorem ipsum dolor sit amet " * (1 + self.settings.text_size // 27))[
            : max(1, self.settings.text_size)
        ]
        self.client = ChatClient(
            environment,
            websocket_url(self.host) if self.host else None,
            self.chat_name,
            timeout=self.settings.ws_timeout,
            close_timeout=self.settings.close_timeout,
        )

    def choose_room(self) -> str:
        """Room of this user: consecutive users fill rooms of ``room_size``, per process."""
        s = self.settings
        return f"{s.room_prefix}-w{self.worker}-{self.number // max(1, s.room_size)}"

    def on_start(self) -> None:
        self.client.ensure_joined(self.room)

    def on_stop(self) -> None:
        self.client.close()


# -- scenarios -------------------------------------------------------------------


class IdleUser(ChatProtocolUser):
    """Connect, hello, join, then only a heartbeat ping every ``--ping-every`` to 1.5 times
    that many seconds (20-30 s by default: spread, so that users started together drift apart).

    The pings go out from the process's heartbeat (``loadtest/client/heartbeat.py``), not
    from this user's greenlet, which sleeps in :meth:`wait_time` until its connection ends:
    an idle user costs Locust no task loop per ping. Locust counts a user in ``wait_time``
    as waiting, so a test stop ends it at once, as any sleeping user.
    """

    def pings_every(self) -> tuple[float, float]:
        return (self.settings.ping_every, 1.5 * self.settings.ping_every)

    def wait_time(self) -> float:
        if self.client.wait_closed():  # the connection was lost: reconnect, spread out
            return random.uniform(0, self.settings.ping_every)
        return random.uniform(*self.pings_every())  # no connection: retry later

    @task
    def stay_connected(self) -> None:
        if self.client.ensure_joined(self.room):
            self.client.keep_pinging(self.pings_every())


class ChatUser(ChatProtocolUser):
    """Rooms of ``--room-size`` users; each user says something every ``--say-every`` s."""

    def on_start(self) -> None:
        super().on_start()
        # Spread the first message so that users spawned together do not speak in lockstep.
        gevent.sleep(random.uniform(0, self.settings.say_every))

    def wait_time(self) -> float:
        return self.settings.say_every

    @task
    def talk(self) -> None:
        if self.client.ensure_joined(self.room):
            self.client.say(self.room, self.text)


class BroadcastUser(ChatProtocolUser):
    """``--rooms`` big rooms shared by all processes; ``--speakers`` users per room and
    process say something every ``--say-every`` s, the others listen (and ping)."""

    def choose_room(self) -> str:
        s = self.settings
        return f"{s.room_prefix}-b{self.number % max(1, s.rooms)}"

    @property
    def speaker(self) -> bool:
        s = self.settings
        return self.number < max(1, s.rooms) * s.speakers

    def on_start(self) -> None:
        super().on_start()
        if self.speaker:
            gevent.sleep(random.uniform(0, self.settings.say_every))

    def wait_time(self) -> float:
        return self.settings.say_every if self.speaker else self.settings.ping_every

    @task
    def talk_or_listen(self) -> None:
        if self.client.ensure_joined(self.room):
            if self.speaker:
                self.client.say(self.room, self.text)
            else:
                self.client.ping()


class ChurnUser(ChatProtocolUser):
    """Short sessions: connect, join, say ``--session-messages`` times (one every
    ``--say-every`` s), close, pause ``--churn-wait`` s, and again."""

    def on_start(self) -> None:
        gevent.sleep(random.uniform(0, self.settings.churn_wait))

    def wait_time(self) -> float:
        return self.settings.churn_wait

    @task
    def session(self) -> None:
        client = self.client
        if not (client.connect() and client.join(self.room)):
            client.close()
            return
        for _ in range(self.settings.session_messages):
            if not client.say(self.room, self.text):
                break
            gevent.sleep(self.settings.say_every)  # also leaves time for the last ack
        client.close()


# The user class of each scenario of loadtest/scenarios.py (a test checks that the names agree).
USER_CLASSES: dict[str, type[ChatProtocolUser]] = {
    "idle": IdleUser,
    "chat": ChatUser,
    "broadcast": BroadcastUser,
    "churn": ChurnUser,
}
