"""The load client (``loadtest.client``) against scripted servers on real sockets, and in Locust.

A scripted server (``tests/scripted_server.py``) plays the chat server's part
exactly as each test needs: a seq gap, a message held before it is sent on,
a ping while the client is in the middle of sending, broken framing. Runs go
through a real ``locust`` subprocess where Locust's own output is the thing
checked; the in-process tests import Locust with ``LOCUST_SKIP_MONKEY_PATCH``
so the rest of the pytest session is unaffected.
"""

from __future__ import annotations

import csv
import importlib
import itertools
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from scripted_server import TIMEOUT, Peer, ScriptedServer, message
from websockets.frames import Opcode

from loadtest.locustcmd import locust_command
from loadtest.serverproc import PROJECT_ROOT

RUN_LIMIT = 120  # seconds: a hung Locust fails the test instead of hanging it


def run_locust(url: str, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    prefix = tmp_path / "run"
    command = locust_command(
        url, "--headless", "--only-summary", "--csv", str(prefix), "--stop-timeout", "2", *args
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=RUN_LIMIT
    )
    return result, prefix


def stats_rows(prefix: Path) -> dict[str, dict[str, str]]:
    with open(prefix.with_name("run_stats.csv"), newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def failure_rows(prefix: Path) -> dict[tuple[str, str], int]:
    with open(prefix.with_name("run_failures.csv"), newline="") as f:
        return {(r["Name"], r["Error"]): int(r["Occurrences"]) for r in csv.DictReader(f)}


def serve_until_closed(peer: Peer) -> None:
    """Keep the connection open (answering the closing handshake) until the client leaves."""
    while True:
        peer.next_frame()


@pytest.fixture
def client_modules(monkeypatch):
    """Import Locust and the client without gevent's monkey-patching of this process."""
    monkeypatch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
    return SimpleNamespace(
        chat=importlib.import_module("loadtest.client.chat"),
        reactor=importlib.import_module("loadtest.client.reactor"),
        stats=importlib.import_module("loadtest.client.stats"),
    )


@pytest.fixture
def local_env(client_modules):
    """A real Locust Environment with a local runner (its stats listen to request events)."""
    from locust import User
    from locust.env import Environment
    from locust.event import Events

    class Nobody(User):
        abstract = True

    env = Environment(user_classes=[Nobody], events=Events())
    runner = env.create_local_runner()
    yield env
    runner.quit()


def wait_until(predicate) -> None:
    """Let gevent run until ``predicate()`` holds (bounded by TIMEOUT)."""
    import gevent

    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        gevent.sleep(0.01)


# -- in Locust ---------------------------------------------------------------------------


def test_seq_gap_and_duplicate_are_failures(tmp_path):
    """A server that sends seq 1, 2, 4, 4, 5: one SeqGap and one SeqDuplicate in Locust's
    failures, every message still timed as fanout, and the run fails."""

    def script(peer: Peer) -> None:
        peer.welcome()
        room = peer.joined(last_seq=0)
        for seq in (1, 2, 4, 4, 5):
            peer.send_json(message(room, seq, "someone", sent_at=time.time()))
        serve_until_closed(peer)

    with ScriptedServer(script) as server:
        result, prefix = run_locust(
            server.url, tmp_path, "--scenario", "chat", "--say-every", "1000", "-u", "1", "-t", "3"
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert failure_rows(prefix) == {
        ("seq", "SeqGap('seq gap: messages lost')"): 1,
        ("seq", "SeqDuplicate('seq duplicate or out of order')"): 1,
    }
    rows = stats_rows(prefix)
    assert int(rows["fanout"]["Request Count"]) == 5
    assert int(rows["fanout"]["Failure Count"]) == 0
    assert "Traceback" not in output


def test_fanout_and_ack_are_end_to_end(tmp_path):
    """A server that holds every message HOLD seconds before sending it on: ack and fanout
    both include that time (measured from the sender's sent_at to the receiver's recv)."""
    hold = 0.3

    def script(peer: Peer) -> None:
        name = peer.welcome()
        room = peer.joined(last_seq=0)
        seq = 0
        while True:
            say = peer.expect("say")
            time.sleep(hold)
            for sender in (name, "someone"):
                seq += 1
                peer.send_json(message(room, seq, sender, sent_at=say["sent_at"]))

    with ScriptedServer(script) as server:
        result, prefix = run_locust(
            server.url, tmp_path, "--scenario", "chat", "--say-every", "0.5", "-u", "1", "-t", "4"
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    rows = stats_rows(prefix)
    for name in ("ack", "fanout"):
        assert int(rows[name]["Request Count"]) >= 1, rows
        assert float(rows[name]["Min Response Time"]) >= hold * 1000, rows[name]


# -- in process ----------------------------------------------------------------------------


def test_server_ping_is_answered_while_a_task_sends(client_modules, local_env):
    """A ping arriving while a task is in the middle of a big send is answered after that
    frame, never inside it: the server reads the whole say, then the pong."""
    import gevent

    big = "x" * (8 * 2**20)  # far more than the socket buffers: the send must wait
    sending = threading.Event()
    seen: dict = {}

    def script(peer: Peer) -> None:
        peer.welcome()
        peer.joined()
        assert sending.wait(TIMEOUT), "the client never got stuck sending"
        peer.send_ping(b"are you there")  # the client is blocked inside its say frame
        say = peer.expect("say")
        seen["say_text_length"] = len(say["text"])
        pong = peer.next_frame()
        seen["pong"] = (pong.opcode, bytes(pong.data))

    with ScriptedServer(script, rcvbuf=4096, max_size=None) as server:
        client = client_modules.chat.ChatClient(local_env, server.url, "pinger")
        assert client.connect() and client.join("lobby")
        sender = gevent.spawn(client.say, "lobby", big)
        gevent.sleep(0)  # the sender runs until the socket is full
        assert not sender.dead, "the whole say fit in the socket buffers"
        sending.set()
        assert sender.get(timeout=TIMEOUT) is True
        wait_until(server.done.is_set)
        client.close()
    assert server.errors == []
    assert seen == {"say_text_length": len(big), "pong": (Opcode.PONG, b"are you there")}
    assert local_env.stats.num_failures == 0


def test_latency_ends_when_the_message_arrived_not_when_it_was_read(client_modules, local_env):
    """A message that waits in the socket while the client's process is busy (here BUSY
    seconds without a turn for gevent) is timed at its arrival, the kernel's stamp, not
    when the receive path got to it: a busy load generator does not make the server look
    slow. A join is timed the same way."""
    from gevent import monkey

    busy = 1.0
    blocking_sleep = monkey.get_original("time", "sleep")
    sent = threading.Event()

    def script(peer: Peer) -> None:
        peer.welcome()
        room = peer.joined(last_seq=0)
        peer.send_json(message(room, 1, "someone", sent_at=time.time()))
        sent.set()
        serve_until_closed(peer)

    with ScriptedServer(script) as server:
        client = client_modules.chat.ChatClient(local_env, server.url, "reader")
        assert client.connect() and client.join("lobby")
        assert sent.wait(TIMEOUT)
        blocking_sleep(busy)  # the message is in the socket; nothing reads it yet
        wait_until(lambda: client.seq.expected.get("lobby") == 2)
        client._reactor.stats.flush(time.time(), everything=True)
        client.close()
    assert server.errors == []
    fanout = local_env.stats.get("fanout", "WS")
    join = local_env.stats.get("join", "WS")
    assert fanout.num_requests == 1 and join.num_requests == 1
    # Arrival within a fraction of BUSY; read at least BUSY after it was sent.
    assert 0 <= fanout.max_response_time < busy * 1000 / 2
    assert local_env.stats.num_failures == 0


def test_server_ping_to_an_idle_client_is_answered_and_the_client_goes_on(
    client_modules, local_env
):
    """Pings to a client no task is sending on (the usual case, answered from the receive
    path at once) each get a pong with their payload, and the client keeps chatting."""
    pongs: list[tuple[Opcode, bytes]] = []

    def script(peer: Peer) -> None:
        peer.welcome()
        peer.joined()
        for n in range(3):
            peer.send_ping(b"ping %d" % n)
            pong = peer.next_frame()
            pongs.append((pong.opcode, bytes(pong.data)))
        say = peer.expect("say")
        peer.send_json(message("lobby", 1, "pinger", say["sent_at"]))
        serve_until_closed(peer)

    with ScriptedServer(script) as server:
        client = client_modules.chat.ChatClient(local_env, server.url, "pinger")
        assert client.connect() and client.join("lobby")
        wait_until(lambda: len(pongs) == 3)
        assert client.say("lobby", "still here")
        wait_until(lambda: client.seq.expected.get("lobby") == 2)  # its own message came back
        client.close()
    assert server.errors == []
    assert pongs == [(Opcode.PONG, b"ping %d" % n) for n in range(3)]
    assert local_env.stats.num_failures == 0


def test_heartbeat_pings_each_connection_from_the_hub_until_it_ends(client_modules, local_env):
    """``keep_pinging``: while the caller's greenlet only waits for the connection to end,
    the process's heartbeat sends a ``ping`` every 0.2-0.3 s, each timed by its pong; asking
    twice on one connection does not double them; a connection that ends is forgotten, and
    the next one is pinged anew."""
    every = (0.2, 0.3)
    arrivals: list[list[float]] = []

    def script(peer: Peer) -> None:
        peer.welcome()
        mine = []
        arrivals.append(mine)
        for _ in range(6):
            ping = peer.expect("ping")
            mine.append(time.monotonic())
            peer.send_json({"type": "pong", "t": ping["t"]})
        if len(arrivals) == 1:
            peer.sock.shutdown(socket.SHUT_RDWR)  # the first connection is lost
        else:
            serve_until_closed(peer)

    with ScriptedServer(script) as server:
        client = client_modules.chat.ChatClient(local_env, server.url, "idler")
        heartbeat = client._reactor.heartbeat
        assert client.connect()
        client.keep_pinging(every)
        client.keep_pinging(every)  # the same connection: no second stream of pings
        assert client.wait_closed(timeout=TIMEOUT), "the lost connection never ended"
        wait_until(lambda: len(heartbeat) == 0)  # its registration is gone
        assert client.connect()
        client.keep_pinging(every)
        wait_until(lambda: len(arrivals) == 2 and len(arrivals[1]) == 6)
        client.close()
    assert server.errors == []
    for times in arrivals:
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) == 6 and min(gaps) > 0.15, gaps  # one stream, 0.2-0.3 s apart
    local_env.events.test_stop.fire()  # flushes the batched samples into Locust's stats
    assert local_env.stats.get("ping", "WS").num_requests == 12
    [lost] = local_env.stats.errors.values()  # the lost connection, reported once
    assert (lost.name, lost.occurrences) == ("close", 1)


def test_bad_framing_and_server_close_are_failures_not_crashes(client_modules, local_env):
    """Broken framing is a 'protocol' failure answered with close 1002; a close frame the
    client did not ask for is a 'close' failure answered with the same code."""
    close_codes: list[int] = []

    def script(peer: Peer) -> None:
        peer.welcome()
        peer.joined()
        mode = peer.expect("say")["text"]
        if mode == "break":
            peer.send_raw(b"\x83\x00")  # opcode 3 is reserved
        else:
            peer.close(1008, "policy")
        while True:
            frame = peer.next_frame()
            if frame.opcode is Opcode.CLOSE:
                close_codes.append(int.from_bytes(frame.data[:2], "big"))

    with ScriptedServer(script) as server:
        for mode in ("break", "close"):
            client = client_modules.chat.ChatClient(local_env, server.url, f"c-{mode}")
            assert client.connect() and client.join("lobby")
            assert client.say("lobby", mode)
            wait_until(lambda client=client: not client.connected)
        wait_until(lambda: len(close_codes) == 2)
    errors = {(e.name, repr(e.error)) for e in local_env.stats.errors.values()}
    assert errors == {
        ("protocol", "ProtocolError('bad frame from server: invalid opcode')"),
        ("close", "UnexpectedClose('server closed the connection (1008)')"),
    }
    assert close_codes == [1002, 1008]


def test_batched_stats_match_one_event_per_sample(client_modules, local_env):
    """The same samples, logged once through events.request.fire each and once through
    BatchedStats, give the same StatsEntry contents (per name and Aggregated)."""
    from locust.stats import RequestStats

    fire = local_env.events.request.fire
    samples = [
        (name, rt, length)
        for i in range(3000)
        for name, rt, length in (("fanout", (i * 7.31) % 2500, 190 + i % 5), ("ack", i % 97, 200))
    ]
    for _attempt in range(5):  # the fire path reads the clock itself: stay within one second
        local_env.stats.reset_all()
        reference = local_env.stats
        batched_stats = RequestStats()
        batched = client_modules.stats.BatchedStats(batched_stats, "WS")
        start = time.time()
        now = start
        for name, rt, length in samples:
            fire(request_type="WS", name=name, response_time=rt, response_length=length)
            now = time.time()
            if now >= batched.second_end:
                batched.rotate(now)
            batched.get(name).add(rt, length, now)
        end = time.time()
        batched.flush(end, everything=True)
        if int(start) == int(end):
            break
    else:
        pytest.fail("could not log the samples within one second")
    for key in [("fanout", "WS"), ("ack", "WS"), None]:
        ours = batched_stats.entries[key] if key else batched_stats.total
        theirs = reference.entries[key] if key else reference.total
        assert dict(ours.response_times) == dict(theirs.response_times)
        assert dict(ours.num_reqs_per_sec) == dict(theirs.num_reqs_per_sec)
        assert ours.num_requests == theirs.num_requests
        assert ours.num_failures == theirs.num_failures == 0
        assert ours.min_response_time == theirs.min_response_time
        assert ours.max_response_time == theirs.max_response_time
        assert ours.total_content_length == theirs.total_content_length
        # Floating-point sums in another order: equal to the last few bits.
        assert ours.total_response_time == pytest.approx(theirs.total_response_time, rel=1e-12)
        assert ours.median_response_time == theirs.median_response_time
        assert ours.get_response_time_percentile(0.99) == theirs.get_response_time_percentile(0.99)
        assert start <= ours.last_request_timestamp <= end
        assert start <= theirs.last_request_timestamp <= end
