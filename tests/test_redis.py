"""Rooms shared by several server processes through a real Redis."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import threading
import time

import pytest
from chatclient import ChatClient, metric_value, wait_for
from hostile import close_code

from loadtest.redisproc import REDIS_SERVER, RedisProcess

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed")

_rooms = itertools.count(1)
PAIRS = [("async", "async"), ("async", "threaded"), ("threaded", "threaded")]


@pytest.fixture
def redis_server(tmp_path):
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def room() -> str:
    return f"shared-{next(_rooms)}"


def leave(client: ChatClient, room_name: str) -> None:
    """Leave ``room_name``, skipping what the room sent before ``left``."""
    client.send({"type": "leave", "room": room_name})
    while client.recv()["type"] != "left":
        pass


def rejoin_until_members(client: ChatClient, room_name: str, expected: int) -> None:
    """Leave and rejoin ``room_name`` until ``joined`` counts ``expected`` members.

    The servers settle counts by themselves; this waits for it, for at most 20 s.
    """
    deadline = time.monotonic() + 20
    while True:
        leave(client, room_name)
        client.send({"type": "join", "room": room_name})
        reply = client.recv()
        while reply["type"] == "presence":
            reply = client.recv()
        assert reply["type"] == "joined", reply
        if reply["members"] == expected:
            return
        assert time.monotonic() < deadline, f"{reply['members']} members counted, {expected} left"
        time.sleep(0.5)


def drain_presence(client: ChatClient, count: int) -> None:
    for _ in range(count):
        client.expect("presence")


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_messages_flow_both_ways_in_one_seq_order(redis_server, server_factory, first, second):
    """Clients on two processes share a room: one seq order, no gaps, on both sides."""
    a_srv = server_factory(first, "--broker", redis_server.url)
    b_srv = server_factory(second, "--broker", redis_server.url)
    r = room()
    with ChatClient(a_srv.url) as a, ChatClient(b_srv.url) as b:
        a.hello("ann")
        b.hello("bob")
        assert a.join(r)["members"] == 1
        assert b.join(r)["members"] == 2
        presence = a.expect("presence")
        assert (presence["name"], presence["event"], presence["members"]) == ("bob", "join", 2)
        for n in range(20):
            (a if n % 2 else b).say(r, f"m{n}", id=str(n))
        for client in (a, b):
            received = client.messages(20)
            assert [m["seq"] for m in received] == list(range(1, 21))
            # each sender's messages stay in the order it sent them
            assert [m["id"] for m in received if m["from"] == "bob"] == [
                str(n) for n in range(0, 20, 2)
            ]
        b.close()
        leave = a.expect("presence")
        assert (leave["event"], leave["members"]) == ("leave", 1)


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_joined_comes_before_the_rooms_messages(redis_server, server_factory, kind):
    """Joining a busy shared room: ``joined`` first, then seq+1, +2, ... with no gap.

    Talkers on another process keep the room busy while a client joins and
    leaves it over and over, so messages arrive while each join is in flight.
    """
    joiner_srv = server_factory(kind, "--broker", redis_server.url)
    talker_srv = server_factory("async", "--broker", redis_server.url)
    r = room()
    stop = threading.Event()

    def talk(client: ChatClient) -> None:
        while not stop.is_set():
            client.say(r, "busy")
            time.sleep(0.06)  # under the 20/s rate limit

    # Talkers never read: an unbounded queue keeps them from becoming slow consumers.
    talkers = [ChatClient(talker_srv.url, max_queue=None) for _ in range(40)]
    threads = [threading.Thread(target=talk, args=(t,), daemon=True) for t in talkers]
    try:
        for t in talkers:
            t.hello()
            t.join(r)
        for thread in threads:
            thread.start()
        with ChatClient(joiner_srv.url) as joiner:
            joiner.hello()
            for _ in range(60):
                time.sleep(0.1)  # join + leave: under the rate limit
                joiner.send({"type": "join", "room": r})
                first = joiner.recv()
                assert first["type"] == "joined", f"{first['type']} before joined: {first}"
                expected = first["seq"] + 1
                for message in joiner.messages(3):
                    assert message["seq"] == expected, (first, message)
                    expected += 1
                leave(joiner, r)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for t in talkers:
            t.close()


def test_member_counts_are_right_after_a_crowd_leaves(redis_server, server_factory):
    """A crowd on two processes joins one room and drops at once: the count returns to 1."""
    a_srv = server_factory("async", "--broker", redis_server.url)
    b_srv = server_factory("threaded", "--broker", redis_server.url)
    r = room()
    crowd = [ChatClient((a_srv if n % 2 else b_srv).url, max_queue=None) for n in range(120)]
    for client in crowd:
        client.hello()
        client.join(r)
    with ChatClient(a_srv.url) as watcher:
        watcher.hello()
        assert watcher.join(r)["members"] == 121
        for client in crowd:
            client.ws.socket.close()  # abrupt: no close frame
        rejoin_until_members(watcher, r, 1)  # the servers see the drops by themselves
    for client in crowd:
        with contextlib.suppress(Exception):
            client.close()


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_member_counts_recover_from_leaves_during_an_outage(redis_server, server_factory, kind):
    """Clients leave while Redis is down: once it is back, the counts come right by themselves."""
    crowd_srv = server_factory(kind, "--broker", redis_server.url)
    watcher_srv = server_factory("async", "--broker", redis_server.url)
    r = room()
    crowd = [ChatClient(crowd_srv.url, max_queue=None) for _ in range(5)]
    for client in crowd:
        client.hello()
        client.join(r)
    with ChatClient(watcher_srv.url) as watcher:
        watcher.hello()
        assert watcher.join(r)["members"] == 6
        redis_server.stop()
        leave(crowd[0], r)
        for client in crowd[1:]:
            client.close()
        # The server tried to count them out, and failed.
        assert wait_for(
            lambda: (
                metric_value(
                    crowd_srv.metrics_text(), "chat_broker_errors_total", operation="presence"
                )
                >= 1
            )
        )
        redis_server.start()
        rejoin_until_members(watcher, r, 1)
    crowd[0].close()


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_broker_errors_counted_the_same_way(redis_server, server_factory, kind):
    """Redis down: the lost subscription counts as subscribe and the failed position
    checks as catch_up, on both servers; clients are still served, and chat resumes."""
    srv = server_factory(kind, "--broker", redis_server.url)
    r = room()

    def errors(operation: str) -> float:
        return metric_value(srv.metrics_text(), "chat_broker_errors_total", operation=operation)

    with ChatClient(srv.url) as c:
        c.hello()
        c.join(r)  # a local room: the position check has work to do
        redis_server.stop()
        assert wait_for(lambda: errors("subscribe") >= 1 and errors("catch_up") >= 1)
        c.send({"type": "ping", "t": 1})
        assert c.expect("pong")["t"] == 1
        redis_server.start()
        assert wait_for(lambda: _say_goes_through(c, r), timeout=20)


def _say_goes_through(client: ChatClient, room_name: str) -> bool:
    client.say(room_name, "back?")
    return client.recv()["type"] == "message"


@pytest.mark.parametrize(("first", "second"), [("async", "threaded"), ("threaded", "async")])
def test_reconnect_to_the_other_process_replays(redis_server, server_factory, first, second):
    """Messages missed while away are replayed by another process with since."""
    a_srv = server_factory(first, "--broker", redis_server.url)
    b_srv = server_factory(second, "--broker", redis_server.url)
    r = room()
    with ChatClient(a_srv.url) as a:
        a.hello()
        a.join(r)
        a.say(r, "before")
        last_seen = a.messages(1)[0]["seq"]
    with ChatClient(a_srv.url) as other:
        other.hello()
        other.join(r)
        for n in range(5):
            other.say(r, f"missed {n}")
        other.messages(5)
    with ChatClient(b_srv.url) as a_again:
        a_again.hello()
        joined = a_again.join(r, since=last_seen)
        assert (joined["seq"], joined["complete"]) == (6, True)
        assert [m["text"] for m in a_again.messages(5)] == [f"missed {n}" for n in range(5)]


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_redis_outage_gives_unavailable_then_recovers(redis_server, server_factory, kind):
    """Redis down: say gets 'unavailable', connections stay; Redis back: chat resumes."""
    a_srv = server_factory(kind, "--broker", redis_server.url)
    b_srv = server_factory("async", "--broker", redis_server.url)
    r = room()
    with ChatClient(a_srv.url) as a, ChatClient(b_srv.url) as b:
        a.hello()
        b.hello()
        a.join(r)
        b.join(r)
        a.expect("presence")
        a.say(r, "one")
        assert [m["seq"] for m in b.messages(1)] == [1]
        a.messages(1)
        redis_server.stop()
        a.say(r, "lost", id="x1")
        error = a.expect("error")
        assert (error["code"], error["ref"]) == ("unavailable", "x1")
        a.send({"type": "ping", "t": 1})
        assert a.expect("pong")["t"] == 1
        redis_server.start()
        deadline = time.monotonic() + 20
        while True:  # the adapters reconnect by themselves
            a.say(r, "after", id="x2")
            reply = a.recv()
            if reply["type"] == "message":
                break
            assert reply["code"] == "unavailable"
            assert time.monotonic() < deadline, "no recovery after Redis came back"
            time.sleep(0.5)
        assert reply["seq"] == 2
        received = b.messages(1)
        assert [(m["seq"], m["text"]) for m in received] == [(2, "after")]
    assert a_srv.proc.poll() is None and b_srv.proc.poll() is None
    errors = metric_value(a_srv.metrics_text(), "chat_broker_errors_total", operation="publish")
    assert errors >= 1


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_two_workers_share_one_port(redis_server, server_factory, kind):
    """--workers 2: connections spread over two processes that share rooms."""
    srv = server_factory(kind, "--broker", redis_server.url, "--workers", "2")
    r = room()
    clients = [ChatClient(srv.url) for _ in range(8)]
    try:
        for c in clients:
            c.hello()
            c.join(r)
        clients[0].say(r, "to everyone")
        for c in clients:
            assert [m["text"] for m in c.messages(1)] == ["to everyone"]
        opened = [
            metric_value(_metrics(srv.host, srv.metrics_port + i), "chat_connections_opened_total")
            for i in range(2)
        ]
        assert sum(opened) == 8
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("kind", ["async", "threaded"])
def test_workers_stop_when_their_supervisor_is_killed(redis_server, server_factory, kind):
    """SIGKILL to the supervisor of --workers 2 (nothing forwards a signal): both workers
    still shut down (the kernel sends them SIGTERM), closing their clients with 1001,
    instead of serving on, orphaned, on the port."""
    import psutil

    srv = server_factory(kind, "--broker", redis_server.url, "--workers", "2")
    workers = [
        child
        for child in psutil.Process(srv.proc.pid).children()
        if "resource_tracker" not in " ".join(child.cmdline())  # multiprocessing's helper
    ]
    assert len(workers) == 2
    client = ChatClient(srv.url)
    client.hello()
    srv.proc.kill()
    srv.proc.wait()
    _gone, alive = psutil.wait_procs(workers, timeout=20)
    assert alive == [], f"workers outlived their supervisor: {alive}"
    assert close_code(client) == 1001
    client.close()


@pytest.mark.parametrize("module", ["async_server", "threaded_server"])
def test_workers_need_a_shared_broker(module):
    """--workers 2 with the in-memory broker is refused with a clear error."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--workers > 1 needs a shared broker" in result.stderr


def _metrics(host: str, port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_locust_two_processes_against_two_workers(redis_server, server_factory, tmp_path):
    """Locust --processes 2 against a 2-worker server: no failure, no seq gap, all measured."""
    from test_loadtest import read_csv, run_locust

    srv = server_factory("async", "--broker", redis_server.url, "--workers", "2")
    result, prefix = run_locust(
        srv.url, tmp_path, "--processes", "2", "--scenario", "chat",
        "-u", "30", "-r", "30", "-t", "8", "--room-size", "10", "--say-every", "1",
        "--exporter-port", "0",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    rows = {row["Name"]: row for row in read_csv(prefix.with_name("run_stats.csv"))}
    for name in ("connect", "ack", "fanout"):
        assert int(rows[name]["Request Count"]) > 0, name
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows
    assert read_csv(prefix.with_name("run_failures.csv")) == []
    opened = [
        metric_value(_metrics(srv.host, srv.metrics_port + i), "chat_connections_opened_total")
        for i in range(2)
    ]
    assert sum(opened) >= 30 and min(opened) > 0, opened  # both workers took clients
