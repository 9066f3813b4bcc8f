"""The load scenarios, named once.

The locustfile's ``--scenario`` option, ``make compare``'s ``--scenario`` and
its SLO all read this table; ``loadtest/users.py`` gives each name its Locust
user class. It imports no Locust, so the comparison runner can use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    """A named load: what each user does, and which latency judges the server."""

    name: str
    latency: str  # the Locust request name whose p99 decides the SLO
    summary: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("chat", "fanout", "rooms of --room-size; each user says something every "
                 "--say-every s"),
        Scenario("idle", "ping", "connect, hello, join, then a heartbeat ping every "
                 "--ping-every to 1.5x --ping-every s"),
        Scenario("broadcast", "fanout", "--rooms big rooms; --speakers users per room and "
                 "process speak, the others listen"),
        Scenario("churn", "fanout", "short sessions: connect, join, say a few times, close, "
                 "pause, again"),
    )
}  # fmt: skip
NAMES = tuple(SCENARIOS)
DEFAULT = "chat"
