"""The wire protocol, checked the same way against both servers.

Every test runs once per server (the ``server`` fixture is parametrized), with
real WebSocket clients over real sockets.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
from chatclient import ChatClient, http_get, metric_value, wait_for
from websockets.exceptions import ConnectionClosed, InvalidStatus

from common.config import ServerConfig

_rooms = itertools.count(1)


def new_room() -> str:
    return f"room-{next(_rooms)}"


def close_code(client: ChatClient) -> int | None:
    """Read until the server closes the connection; return the close code it sent."""
    try:
        while True:
            client.ws.recv(10)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


# Session


def test_welcome(server):
    """hello is answered with welcome: session, name, implementation, protocol and limits."""
    with ChatClient(server.url) as c:
        welcome = c.hello("ann")
    assert welcome["name"] == "ann"
    assert welcome["implementation"] == server.kind
    assert welcome["protocol"] == 1
    assert isinstance(welcome["session"], str) and welcome["session"]
    assert welcome["limits"] == {
        "max_frame_bytes": 65536,
        "max_text_chars": 4096,
        "messages_per_second": 20.0,
        "burst": 40,
        "history_size": 100,
    }


def test_hello_required(server):
    """Anything before hello gets hello_required, and the connection stays open."""
    with ChatClient(server.url) as c:
        c.send({"type": "join", "room": "lobby", "id": "j1"})
        error = c.expect("error")
        assert error["code"] == "hello_required"
        assert error["ref"] == "j1"
        c.hello()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ('{"type": "say", ', "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"hello"', "bad_message"),
        ("{}", "bad_message"),
        ('{"type": "shout"}', "unknown_type"),
        ('{"type": 7}', "unknown_type"),
        ('{"type": "join"}', "bad_message"),
        ('{"type": "join", "room": "no spaces"}', "bad_message"),
        ('{"type": "join", "room": "' + "r" * 65 + '"}', "bad_message"),
        ('{"type": "join", "room": "ok", "since": -1}', "bad_message"),
        ('{"type": "join", "room": "ok", "since": "3"}', "bad_message"),
        ('{"type": "say", "room": "lobby"}', "bad_message"),
        ('{"type": "say", "room": "lobby", "text": ""}', "bad_message"),
        ('{"type": "say", "room": "lobby", "text": 5}', "bad_message"),
        ('{"type": "say", "room": "lobby", "text": "x", "sent_at": "now"}', "bad_message"),
        ('{"type": "say", "room": "lobby", "text": "x", "id": 12}', "bad_message"),
        ('{"type": "say", "room": "lobby", "text": "' + "x" * 4097 + '"}', "too_long"),
        ('{"type": "say", "room": "elsewhere", "text": "x"}', "not_joined"),
        ('{"type": "leave", "room": "elsewhere"}', "not_joined"),
        ('{"type": "hello", "name": "again"}', "bad_message"),
        ('{"type": "ping", "t": [1]}', "bad_message"),
        ('{"type": "ping", "t": "' + "t" * 65 + '"}', "bad_message"),
    ],
)
def test_errors_keep_the_connection_open(server, frame, code):
    """Each kind of bad message gets its error code and the session goes on."""
    with ChatClient(server.url) as c:
        c.hello()
        c.join("lobby")
        c.send(frame)
        error = c.expect("error")
        assert error["code"] == code
        assert isinstance(error["message"], str) and "Traceback" not in error["message"]
        c.send({"type": "ping", "t": 1})
        assert c.expect("pong") == {"type": "pong", "t": 1}


@pytest.mark.parametrize("name", ["", "x" * 33, "tab\there", 7, None])
def test_bad_names(server, name):
    """Names must be 1-32 printable characters."""
    with ChatClient(server.url) as c:
        c.send({"type": "hello", "name": name})
        assert c.expect("error")["code"] == "bad_message"


def test_error_carries_ref(server):
    """An error about a say with an id refers to that id."""
    with ChatClient(server.url) as c:
        c.hello()
        c.say("not-joined", "hi", id="m-17")
        error = c.expect("error")
        assert (error["code"], error["ref"]) == ("not_joined", "m-17")


def test_ping_pong(server):
    """ping is answered with pong, echoing t when given."""
    with ChatClient(server.url) as c:
        c.hello()
        c.send({"type": "ping", "t": "abc"})
        assert c.expect("pong") == {"type": "pong", "t": "abc"}
        c.send({"type": "ping"})
        assert c.expect("pong") == {"type": "pong"}


# Rooms


def test_join_presence_leave(server):
    """join, presence join/leave with member counts, leave, and leave on disconnect."""
    room = new_room()
    with ChatClient(server.url) as a, ChatClient(server.url) as b:
        a.hello("ann")
        b.hello("bob")
        assert a.join(room) == {
            "type": "joined", "room": room, "seq": 0, "members": 1, "complete": True,
        }  # fmt: skip
        assert b.join(room)["members"] == 2
        assert a.expect("presence") == {
            "type": "presence", "room": room, "name": "bob", "event": "join", "members": 2,
        }  # fmt: skip
        b.send({"type": "leave", "room": room})
        assert b.expect("left") == {"type": "left", "room": room}
        assert a.expect("presence")["event"] == "leave"
        b.join(room)
        assert a.expect("presence")["members"] == 2
    # a and b closed: start a third to see b's disconnect from a's side
    with ChatClient(server.url) as a, ChatClient(server.url) as b:
        a.hello("ann")
        b.hello("bob")
        a.join(room)
        b.join(room)
        a.expect("presence")
        b.close()
        leave = a.expect("presence")
        assert (leave["name"], leave["event"], leave["members"]) == ("bob", "leave", 1)


def test_say_reaches_every_member_with_echoed_fields(server):
    """say is delivered to every member, sender included, with id and sent_at echoed."""
    room = new_room()
    with ChatClient(server.url) as a, ChatClient(server.url) as b:
        a.hello("ann")
        b.hello("bob")
        a.join(room)
        b.join(room)
        a.expect("presence")
        before = time.time()
        a.say(room, "hello there", id="m1", sent_at=1234.5)
        for client in (a, b):
            message = client.expect("message")
            assert message["room"] == room
            assert message["seq"] == 1
            assert message["from"] == "ann"
            assert message["text"] == "hello there"
            assert message["id"] == "m1"
            assert message["sent_at"] == 1234.5
            assert before - 5 <= message["ts"] <= time.time() + 5


def test_seq_order_no_gaps_with_concurrent_senders(server):
    """Several clients saying at once: every member sees seq 1..N, in order, once each."""
    room = new_room()
    senders, per_sender = 5, 30
    clients = [ChatClient(server.url) for _ in range(senders)]
    try:
        for c in clients:
            c.hello()
            c.join(room)
        for i, c in enumerate(clients):  # drain the presence notices of later joiners
            for _ in range(senders - 1 - i):
                c.expect("presence")

        def send_all(c: ChatClient) -> None:
            for n in range(per_sender):
                c.say(room, f"{c.name} {n}")

        threads = [threading.Thread(target=send_all, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = senders * per_sender
        for c in clients:
            received = c.messages(total)
            assert [m["seq"] for m in received] == list(range(1, total + 1))
            # and each sender's messages keep the order it sent them in
            for sender in clients:
                texts = [m["text"] for m in received if m["from"] == sender.name]
                assert texts == [f"{sender.name} {n}" for n in range(per_sender)]
    finally:
        for c in clients:
            c.close()


def test_replay_since(server):
    """join with since replays the retained messages after it, in order, complete."""
    room = new_room()
    with ChatClient(server.url) as a:
        a.hello()
        a.join(room)
        for n in range(5):
            a.say(room, f"m{n}")
        a.messages(5)
    with ChatClient(server.url) as b:
        b.hello()
        joined = b.join(room, since=2)
        assert (joined["seq"], joined["complete"]) == (5, True)
        assert [m["text"] for m in b.messages(3)] == ["m2", "m3", "m4"]


def test_replay_incomplete_when_history_overflowed(server_factory, server):
    """When history no longer holds everything after since, joined says complete: false."""
    srv = server_factory(server.kind, "--history-size", "3")
    room = new_room()
    with ChatClient(srv.url) as a:
        a.hello()
        a.join(room)
        for n in range(6):
            a.say(room, f"m{n}")
        a.messages(6)
        a.send({"type": "leave", "room": room})
        a.expect("left")
        joined = a.join(room, since=1)
        assert (joined["seq"], joined["complete"]) == (6, False)
        assert [m["seq"] for m in a.messages(3)] == [4, 5, 6]
        joined = a.join(new_room(), since=10)  # a seq this room never reached
        assert joined["complete"] is False


# Closing


def test_binary_frame_closes_1003(server):
    """A binary frame closes the connection with 1003."""
    with ChatClient(server.url) as c:
        c.hello()
        c.ws.send(b"\x00\x01")
        assert close_code(c) == 1003


def test_oversized_frame_closes_1009(server):
    """A frame over max_frame_bytes closes the connection with 1009."""
    with ChatClient(server.url, max_size=None) as c:
        c.hello()
        c.ws.send("x" * (65536 + 1))
        assert close_code(c) == 1009


def test_invalid_utf8_closes_1007(server):
    """A text frame that is not UTF-8 closes the connection with 1007."""
    with ChatClient(server.url) as c:
        c.hello()
        c.ws.send(b'{"type": "ping", "t": "\xff"}', text=True)
        assert close_code(c) == 1007


def test_flood_gets_rate_limited_then_1008(server):
    """Past the burst, messages get rate_limited; persistent flooding closes with 1008."""
    with ChatClient(server.url) as c:
        c.hello()
        for n in range(200):
            try:
                c.send({"type": "ping", "t": n})
            except ConnectionClosed:
                break
        codes = []
        try:
            while True:
                message = c.recv()
                if message["type"] == "error":
                    codes.append(message["code"])
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1008
    assert codes and set(codes) == {"rate_limited"}


def test_shutdown_closes_1001_and_exits_0(server_factory, server):
    """SIGTERM closes every client with 1001 and the server exits 0."""
    srv = server_factory(server.kind)
    clients = [ChatClient(srv.url) for _ in range(3)]
    for c in clients:
        c.hello()
    srv.proc.send_signal(signal.SIGTERM)
    assert [close_code(c) for c in clients] == [1001, 1001, 1001]
    assert srv.proc.wait(15) == 0


def test_capacity_refused_with_503(server_factory, server):
    """Past --max-connections the handshake gets 503; existing clients go on."""
    srv = server_factory(server.kind, "--max-connections", "2")
    with ChatClient(srv.url) as a, ChatClient(srv.url) as b:
        a.hello()
        b.hello()
        with pytest.raises(InvalidStatus) as info:
            ChatClient(srv.url)
        assert info.value.response.status_code == 503
        a.send({"type": "ping", "t": 1})
        assert a.expect("pong")["t"] == 1
    metrics = srv.metrics_text()
    assert metric_value(metrics, "chat_connections_rejected_total", reason="capacity") == 1
    assert wait_for(lambda: srv.healthz()["connections"] == 0)
    with ChatClient(srv.url) as c:  # room again once the others left
        c.hello()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_both_servers_queue_the_same_connect_burst(server):
    """Both listen with the configured accept queue, so a burst of connects that
    one server survives does not overflow the other's (asyncio's default is 100)."""
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    with open("/proc/sys/net/core/somaxconn") as f:
        ceiling = int(f.read())
    assert int(listing[2]) == min(ServerConfig().listen_backlog, ceiling)  # Send-Q


def test_refusals_counted_by_reason(server_factory, server):
    """A refused upgrade (bad Origin, 403) counts as handshake, a 503 when full as capacity."""
    good = "http://good.example"
    srv = server_factory(server.kind, "--max-connections", "1", "--allowed-origin", good)
    with pytest.raises(InvalidStatus) as info:
        ChatClient(srv.url, origin="http://evil.example")
    assert info.value.response.status_code == 403
    with ChatClient(srv.url, origin=good) as c:
        c.hello()
        with pytest.raises(InvalidStatus) as info:
            ChatClient(srv.url, origin=good)
        assert info.value.response.status_code == 503
    metrics = srv.metrics_text()
    counted = {
        reason: metric_value(metrics, "chat_connections_rejected_total", reason=reason)
        for reason in ("handshake", "capacity", "overload")
    }
    assert counted == {"handshake": 1, "capacity": 1, "overload": 0}


def test_disconnect_reasons(server):
    """A close with 1000 or 1001 counts as client_close; another code, or no close frame
    at all, as error; a server-side close as the reason the server had (here 1003)."""

    def count(reason: str) -> float:
        return metric_value(server.metrics_text(), "chat_disconnects_total", reason=reason)

    before = {reason: count(reason) for reason in ("client_close", "error")}
    for code in (1000, 1001):
        c = ChatClient(server.url)
        c.hello()
        c.ws.close(code)
    c = ChatClient(server.url)
    c.hello()
    c.ws.close(4000)
    c = ChatClient(server.url)
    c.hello()
    c.ws.socket.close()  # no close frame
    c = ChatClient(server.url)
    c.hello()
    c.ws.send(b"\x00")  # binary: the server closes with 1003, for an error
    assert close_code(c) == 1003
    assert wait_for(lambda: count("client_close") == before["client_close"] + 2)
    assert wait_for(lambda: count("error") == before["error"] + 3)


def test_origin_restricted(server_factory, server):
    """With --allowed-origin, another Origin gets 403 and the allowed one gets in."""
    srv = server_factory(server.kind, "--allowed-origin", "http://good.example")
    with pytest.raises(InvalidStatus) as info:
        ChatClient(srv.url, origin="http://evil.example")
    assert info.value.response.status_code == 403
    with ChatClient(srv.url, origin="http://good.example") as c:
        c.hello()


def test_slow_consumer_dropped_others_unaffected(server_factory, server):
    """A client that stops reading is dropped as slow_consumer; the room keeps receiving."""
    srv = server_factory(
        server.kind, "--rate", "10000", "--burst", "10000", "--max-backlog-bytes", "262144"
    )
    room = new_room()
    # The slow client: a raw socket with a tiny receive buffer that never reads.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((srv.host, srv.port))
    slow.sendall(_client_handshake(srv.host, srv.port))
    _read_http_response(slow)
    for message in ({"type": "hello", "name": "slow"}, {"type": "join", "room": room}):
        slow.sendall(_masked_text_frame(json.dumps(message).encode()))
    # max_queue=None: these two read everything, unlike the slow one.
    with (
        ChatClient(srv.url, max_queue=None) as sender,
        ChatClient(srv.url, max_queue=None) as reader,
    ):
        sender.hello()
        reader.hello()
        sender.join(room)
        reader.join(room)
        total, text = 2000, "y" * 4000
        received: list[int] = []

        def read_all() -> None:
            received.extend(m["seq"] for m in reader.messages(total))

        reading = threading.Thread(target=read_all)
        reading.start()
        for n in range(total):
            sender.say(room, text, id=str(n))
        sender.messages(total)
        reading.join(60)
        assert received == list(range(1, total + 1))
    metrics = srv.metrics_text()
    assert metric_value(metrics, "chat_disconnects_total", reason="slow_consumer") == 1
    slow.close()


def _client_handshake(host: str, port: int) -> bytes:
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _read_http_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "server closed during handshake"
        data += chunk
    assert data.startswith(b"HTTP/1.1 101"), data
    return data


def _masked_text_frame(payload: bytes) -> bytes:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, payload).serialize(mask=True)


# HTTP and metrics


def test_healthz(server):
    """/healthz answers 200 with status, implementation and connection count."""
    status, headers, body = http_get(f"{server.http_url}/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["implementation"] == server.kind
    assert isinstance(health["connections"], int)


def test_web_page_served(server):
    """GET / serves the HTML chat page; unknown paths get 404."""
    status, headers, body = http_get(f"{server.http_url}/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"<html" in body.lower() and b"/ws" in body
    assert http_get(f"{server.http_url}/nope")[0] == 404


METRIC_NAMES = [
    "chat_connections",
    "chat_connections_opened_total",
    "chat_connections_rejected_total",
    "chat_disconnects_total",
    "chat_messages_received_total",
    "chat_messages_delivered_total",
    "chat_messages_dropped_total",
    "chat_fanout_seconds_bucket",
    "chat_rooms",
    "chat_threads",
    "chat_gc_pause_seconds_bucket",
    "chat_server_info",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_cpu_seconds_total",
]


def test_metrics_present_and_moving(server):
    """/metrics has every documented name, and the counters move with traffic."""
    before = server.metrics_text()
    for name in METRIC_NAMES:
        assert f"\n{name}" in before or before.startswith(name), name
    assert metric_value(before, "chat_server_info", implementation=server.kind) == 1
    room = new_room()
    with ChatClient(server.url) as a, ChatClient(server.url) as b:
        a.hello()
        b.hello()
        a.join(room)
        b.join(room)
        a.say(room, "counted")
        b.messages(1)
        a.messages(1)
        during = server.metrics_text()
        assert metric_value(during, "chat_connections") >= 2
        assert metric_value(during, "chat_rooms") >= 1
        assert metric_value(during, "chat_threads") >= 1
    after = server.metrics_text()
    for name, grew_by in [
        ("chat_messages_received_total", 5),
        ("chat_messages_delivered_total", 2),
        ("chat_connections_opened_total", 2),
        ("chat_fanout_seconds_count", 1),
    ]:
        assert metric_value(after, name) - metric_value(before, name) >= grew_by, name
    if server.kind == "async":
        assert "chat_event_loop_lag_seconds_bucket" in after
    assert 'room="' not in after and "session=" not in after
