"""Keepalive on both servers (common/keepalive.py): WebSocket pings go only to silent clients.

A client that sends something more often than ``--ping-interval`` never gets a
ping; a silent one gets one per interval and stays as long as it answers; one
that stops answering is dropped (tests/test_faults.py's dead peer). The policy
itself is tested without sockets at the end.
"""

from __future__ import annotations

import math
import select
import time

from hostile import RawClient
from websockets.frames import Opcode

from common.keepalive import Action, Keepalive, Liveness

PING = 0.6  # --ping-interval and --ping-timeout of the servers here


def pings(client: RawClient) -> int:
    return sum(1 for frame in client.frames if frame.opcode is Opcode.PING)


def test_only_silent_clients_are_pinged(server_factory, server):
    """Over 4 ping intervals a silent client gets pings (and, answering them, stays), while
    one that sends a protocol ``ping`` every third of an interval gets none."""
    srv = server_factory(server.kind, "--ping-interval", str(PING), "--ping-timeout", str(PING))
    with RawClient(srv.url) as silent, RawClient(srv.url) as talker:
        silent.hello("silent")
        talker.hello("talker")
        silent.frames.clear()
        talker.frames.clear()
        end = time.monotonic() + 4 * PING
        next_ping = 0.0
        pongs = 0
        while (now := time.monotonic()) < end:
            if now >= next_ping:
                talker.send_json({"type": "ping", "t": 1})
                next_ping = now + PING / 3
            ready, _, _ = select.select([silent.sock, talker.sock], [], [], 0.02)
            for client in (silent, talker):
                if client.sock in ready:
                    client.read_some()  # answers pings (websockets' Sans-I/O does)
            pongs += sum(1 for f in talker.frames if f.opcode is Opcode.TEXT)
            talker.frames[:] = [f for f in talker.frames if f.opcode is not Opcode.TEXT]
        assert pings(talker) == 0, "a client that keeps talking was pinged"
        assert pongs >= 8
        assert pings(silent) >= 2, "a silent client was not pinged"
        silent.send_json({"type": "ping", "t": 2})  # still connected: it answered its pings
        assert silent.next_json()["type"] == "pong"
        assert silent.protocol.close_rcvd is None and talker.protocol.close_rcvd is None


# -- the policy, without sockets ---------------------------------------------------------


def test_ping_after_an_interval_of_silence_and_give_up_once_after_the_timeout():
    keepalive = Keepalive(interval=20, timeout=10)
    peer = Liveness(now=100)
    assert keepalive.check(peer, 119.9) is Action.NOTHING
    assert keepalive.wait(peer, 110) == 10
    assert keepalive.check(peer, 120) is Action.PING
    assert keepalive.check(peer, 125) is Action.NOTHING  # waiting for the answer
    assert keepalive.wait(peer, 125) == 5
    assert keepalive.check(peer, 130) is Action.GIVE_UP
    assert keepalive.check(peer, 131) is Action.NOTHING  # once: the server is closing it
    assert keepalive.wait(peer, 131) == math.inf


def test_anything_heard_counts_as_alive():
    keepalive = Keepalive(interval=20, timeout=10)
    peer = Liveness(now=0)
    peer.heard(15)  # a message: no ping at 20
    assert keepalive.check(peer, 20) is Action.NOTHING
    assert keepalive.check(peer, 35) is Action.PING
    peer.heard(36)  # the pong (or anything else)
    assert keepalive.check(peer, 46) is Action.NOTHING  # no give-up
    assert keepalive.check(peer, 56) is Action.PING


def test_without_a_timeout_a_silent_peer_is_pinged_every_interval_and_never_dropped():
    keepalive = Keepalive(interval=5, timeout=None)
    peer = Liveness(now=0)
    actions = [keepalive.check(peer, t) for t in range(0, 21)]
    assert [t for t, a in enumerate(actions) if a is Action.PING] == [5, 10, 15, 20]
    assert Action.GIVE_UP not in actions


def test_pings_off():
    keepalive = Keepalive(interval=None, timeout=10)
    peer = Liveness(now=0)
    assert not keepalive.enabled
    assert keepalive.check(peer, 1e9) is Action.NOTHING
    assert keepalive.wait(peer, 0) == math.inf


def test_tick_is_a_quarter_of_the_shortest_period():
    assert Keepalive(20, 20).tick == 5.0
    assert Keepalive(0.6, 2).tick == 0.15
    assert Keepalive(20, 0.4).tick == 0.1
