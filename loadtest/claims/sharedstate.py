"""Shared state: the threaded server with its ``chat_lock`` taken away, and what breaks.

``python -m loadtest.claims.sharedstate [--no-lock] [--switch-interval S]`` runs
the threaded server in this process (a real :class:`threaded_server.server.ChatServer`
on a free loopback port), with ``chat_lock`` replaced by a no-op when asked
(a test hook: an attribute set here, no server flag), drives it with real
WebSocket clients over real sockets, and prints the counts as JSON.

The load, bounded and loopback only: :data:`SENDERS` clients each send
:data:`SAYS` says to one room as fast as they can, :data:`WATCHERS` members
only read, and :data:`CHURNERS` clients join and leave the room over and over
meanwhile. Counted:

- ``out_of_order``: messages a watcher received with a seq lower than the one
  before;
- ``duplicate_seq``: seq numbers carried by two different messages;
- ``seq_gaps``: seq numbers below the highest that no message carried;
- ``lost``: messages a sender sent that a watcher never received (summed over
  the watchers);
- ``connections_lost``: clients whose connection the server ended (a handler
  that crashed closes with 1011);
- ``members_lost``: members the room no longer counts (the ``members`` of a
  last ``joined``, against the clients that are members).

``--switch-interval`` sets ``sys.setswitchinterval`` for the run (CPython's
default is 0.005 s): a shorter one makes, within seconds, the thread switches
that the default produces more rarely. Every count is 0 with the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from common.config import ServerConfig
from common.limits import Limits
from loadtest.serverproc import free_port
from threaded_server.server import ChatServer

SENDERS = 8
SAYS = 250
WATCHERS = 3
CHURNERS = 3
ROOM = "shared"
IDLE_S = 1.5  # a watcher that received nothing for this long has all it will get
DEFAULT_SWITCH_INTERVAL = 0.005
# What the experiment counts (see above): every one is 0 with the lock.
BREAKAGES = ("out_of_order", "duplicate_seq", "seq_gaps", "lost", "connections_lost",
             "members_lost")  # fmt: skip


def experiment(locked: bool, switch_interval: float = DEFAULT_SWITCH_INTERVAL) -> dict:
    """Run the server with or without ``chat_lock`` under the load above; return the counts."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    unlimited = 10**9
    config = ServerConfig(
        port=free_port(),
        max_connections=100,
        limits=Limits(messages_per_second=unlimited, burst=unlimited, flood_tolerance=unlimited),
        ping_interval=None,
        ping_timeout=None,
    )
    server = ChatServer(config)
    if not locked:
        server.chat_lock = contextlib.nullcontext()  # the test hook: no mutual exclusion
    server.start()
    serving = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    serving.start()
    try:
        counts = drive(f"ws://{config.host}:{config.port}/ws")
    finally:
        server.stop()
        serving.join(10)
        server.shutdown()
        sys.setswitchinterval(previous)
    return {"locked": locked, "switch_interval": switch_interval, **counts}


def _client(stack: contextlib.ExitStack, url: str, name: str) -> ClientConnection:
    """A connection that said hello; closed when ``stack`` closes."""
    # max_queue=None: senders never read, and their close must not wait behind a full queue.
    ws = stack.enter_context(connect(url, open_timeout=10, close_timeout=1, max_queue=None))
    ws.send(json.dumps({"type": "hello", "name": name}))
    _expect(ws, "welcome")
    return ws


def _expect(ws: ClientConnection, kind: str) -> dict:
    while True:
        message = json.loads(ws.recv(10))
        if message["type"] == kind:
            return message


def _join(ws: ClientConnection) -> dict:
    ws.send(json.dumps({"type": "join", "room": ROOM}))
    return _expect(ws, "joined")


def drive(url: str) -> dict:
    """The clients' side of the experiment (see the module docstring)."""
    with contextlib.ExitStack() as stack:
        return _drive(stack, url)


def _drive(stack: contextlib.ExitStack, url: str) -> dict:
    lost_connections = 0
    lock = threading.Lock()

    def died() -> None:
        nonlocal lost_connections
        with lock:
            lost_connections += 1

    watchers = [_client(stack, url, f"watch{i}") for i in range(WATCHERS)]
    senders = [_client(stack, url, f"send{i}") for i in range(SENDERS)]
    for ws in watchers + senders:
        _join(ws)
    received: list[list[tuple[int, str]]] = [[] for _ in watchers]
    sent: list[int] = [0] * SENDERS
    stop_churn = threading.Event()

    def watch(index: int) -> None:
        ws = watchers[index]
        try:
            while True:
                message = json.loads(ws.recv(IDLE_S))
                if message["type"] == "message":
                    received[index].append((message["seq"], message["id"]))
        except TimeoutError:
            return
        except ConnectionClosed:
            died()

    def send(index: int) -> None:
        ws = senders[index]
        try:
            for k in range(SAYS):
                ws.send(
                    json.dumps({"type": "say", "room": ROOM, "text": "x", "id": f"{index}-{k}"})
                )
                sent[index] += 1
        except ConnectionClosed:
            died()

    def churn(index: int) -> None:
        try:
            ws = _client(stack, url, f"churn{index}")
            while not stop_churn.is_set():
                ws.send(json.dumps({"type": "join", "room": ROOM}))
                ws.send(json.dumps({"type": "leave", "room": ROOM}))
                time.sleep(0.001)
            ws.close()
        except ConnectionClosed:
            died()

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(WATCHERS)]
    threads += [threading.Thread(target=churn, args=(i,)) for i in range(CHURNERS)]
    senders_threads = [threading.Thread(target=send, args=(i,)) for i in range(SENDERS)]
    for t in threads + senders_threads:
        t.start()
    for t in senders_threads:
        t.join(60)
    stop_churn.set()
    for t in threads:
        t.join(60)

    # The room should now count the senders and watchers still connected, plus one.
    alive = sum(1 for ws in watchers + senders if ws.protocol.close_code is None)
    members = None
    with contextlib.suppress(Exception):
        last = _client(stack, url, "last")
        members = _join(last)["members"]
        last.close()

    carriers: dict[int, set[str]] = {}
    out_of_order = lost = 0
    expected = {f"{i}-{k}" for i in range(SENDERS) for k in range(sent[i])}
    for messages in received:
        previous = 0
        for seq, message_id in messages:
            carriers.setdefault(seq, set()).add(message_id)
            if seq < previous:
                out_of_order += 1
            previous = seq
        lost += len(expected - {message_id for _, message_id in messages})
    top = max(carriers, default=0)
    return {
        "senders": SENDERS,
        "says_sent": sum(sent),
        "watchers": WATCHERS,
        "churners": CHURNERS,
        "out_of_order": out_of_order,
        "duplicate_seq": sum(1 for ids in carriers.values() if len(ids) > 1),
        "seq_gaps": top - len(carriers),
        "lost": lost,
        "connections_lost": lost_connections,
        "members_lost": None if members is None else max(0, alive + 1 - members),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.claims.sharedstate")
    parser.add_argument("--no-lock", action="store_true", help="replace chat_lock by a no-op")
    parser.add_argument("--switch-interval", type=float, default=DEFAULT_SWITCH_INTERVAL)
    args = parser.parse_args(argv)
    print(json.dumps(experiment(not args.no_lock, args.switch_interval)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
