"""Hostile input, on both servers, each while a bystander keeps chatting in the room.

tests/test_conformance.py already checks the plain error codes and closes
(bad_json, bad_message, 1003, 1007, 1009 at 65 KiB, 1008, 403, 503). This
module goes further: input built to break parsers and encoders, frames far over
the limit, floods, handshakes that never finish or never fit, fragments and
compression. Every test ends by checking that a well-behaved client in the same
room received every message in order and that the server still answers /healthz.
"""

from __future__ import annotations

import socket
import threading
import time
import zlib

import pytest
from chatclient import TIMEOUT, ChatClient, metric_value, wait_for
from hostile import (
    Bystander,
    RawClient,
    close_code,
    masked_frame,
    new_room,
    raw_request,
    rss,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus

MIB = 1024 * 1024
R = "ROOM"  # replaced by the test's room in the battery below

# Frames and the error codes they must get; the connection stays open after each.
# Where the JSON text is valid by RFC 8259's grammar but beyond what a parser
# must accept (numbers out of double range, nesting past a depth limit), either
# bad_json or bad_message is right: RFC 8259 section 9 lets a parser set limits.
EITHER = {"bad_json", "bad_message"}
BATTERY = [
    # not an object
    ("null", {"bad_message"}),
    ("true", {"bad_message"}),
    ("3.14", {"bad_message"}),
    ('""', {"bad_message"}),
    ('[{"type": "ping"}]', {"bad_message"}),
    ('{"type": "ping"} {"type": "ping"}', {"bad_json"}),
    ("1" + "0" * 5000, EITHER),
    ("1e400", EITHER),
    ("-1e400", EITHER),
    ("NaN", {"bad_json"}),
    ("Infinity", {"bad_json"}),
    # deep nesting
    ("[" * 10000, {"bad_json"}),
    ("[" * 10000 + "]" * 10000, EITHER),
    ('{"a":' * 5000 + "1" + "}" * 5000, EITHER),
    ('{"type": "ping", "t": ' + "[" * 10000 + "]" * 10000 + "}", EITHER),
    ('{"type": "say", "room": "ROOM", "text": "x", "id": ' + "[" * 3000 + "]" * 3000 + "}", EITHER),
    # wrong-typed fields
    ('{"type": null}', {"bad_message", "unknown_type"}),
    ('{"type": ["say"]}', {"unknown_type"}),
    ('{"type": {"say": 1}}', {"unknown_type"}),
    ('{"type": "say", "room": 5, "text": "x"}', {"bad_message"}),
    ('{"type": "say", "room": ["ROOM"], "text": "x"}', {"bad_message"}),
    ('{"type": "say", "room": null, "text": "x"}', {"bad_message"}),
    ('{"type": "say", "room": "ROOM", "text": null}', {"bad_message"}),
    ('{"type": "say", "room": "ROOM", "text": ["x"]}', {"bad_message"}),
    ('{"type": "say", "room": "ROOM", "text": {"x": 1}}', {"bad_message"}),
    ('{"type": "say", "room": "ROOM", "text": "x", "sent_at": true}', {"bad_message"}),
    ('{"type": "say", "room": "ROOM", "text": "x", "sent_at": [1]}', {"bad_message"}),
    ('{"type": "say", "room": "ROOM", "text": "x", "sent_at": NaN}', {"bad_json"}),
    ('{"type": "say", "room": "ROOM", "text": "x", "sent_at": 1e400}', EITHER),
    ('{"type": "say", "room": "ROOM", "text": "x", "id": "' + "i" * 65 + '"}', {"bad_message"}),
    ('{"type": "say", "room": "ROOM", "text": "x", "id": {"a": 1}}', {"bad_message"}),
    ('{"type": "join", "room": "ROOM", "since": true}', {"bad_message"}),
    ('{"type": "join", "room": "ROOM", "since": 1.5}', {"bad_message"}),
    ('{"type": "join", "room": "ROOM", "since": 1e400}', EITHER),
    ('{"type": "join", "room": "ROOM", "since": 18446744073709551616}', EITHER),
    ('{"type": "join", "room": "lobby\\n"}', {"bad_message"}),
    ('{"type": "join", "room": "\u0430bc"}', {"bad_message"}),  # Cyrillic a
    ('{"type": "join", "room": "../etc"}', {"bad_message"}),
    ('{"type": "leave", "room": 7}', {"bad_message"}),
    # lone surrogates: valid JSON escapes that no UTF-8 encoder can write back
    ('{"type": "say", "room": "ROOM", "text": "\\ud800"}', EITHER),
    ('{"type": "say", "room": "ROOM", "text": "x", "id": "\\udfff"}', EITHER),
    ('{"type": "ping", "t": "\\ud800"}', EITHER),
]


@pytest.mark.parametrize(
    ("frame", "codes"),
    [pytest.param(f, c, id=f[:40] + (f"...({len(f)})" if len(f) > 40 else "")) for f, c in BATTERY],
)
def test_bad_input_battery(server, frame, codes):
    """Each hostile frame gets its error code, the session goes on, the room is untouched."""
    room = new_room()
    with Bystander(server.url, room) as bystander, ChatClient(server.url) as attacker:
        attacker.hello()
        attacker.join(room)
        attacker.send(frame.replace(R, room))
        reply = attacker.recv()
        while reply["type"] in ("presence", "message"):
            reply = attacker.recv()
        assert reply["type"] == "error", reply
        assert reply["code"] in codes, reply
        assert "Traceback" not in reply["message"]
        attacker.send({"type": "ping", "t": 1})
        while (reply := attacker.recv())["type"] != "pong":
            assert reply["type"] in ("presence", "message"), reply
        assert reply["t"] == 1
        bystander.finish(server)


@pytest.mark.parametrize("depth", [100, 300, 1000])
def test_ping_echoes_any_valid_t(server, depth):
    """ping with a deeply nested (but parseable) t gets a pong or an error, never a dropped line."""
    room = new_room()
    t = "[" * depth + "]" * depth
    with Bystander(server.url, room) as bystander, ChatClient(server.url) as c:
        c.hello()
        c.send('{"type": "ping", "t": ' + t + "}")
        try:
            reply = c.recv()
        except ConnectionClosed as exc:
            pytest.fail(f"{server.kind}: ping with t nested {depth} deep closed the connection "
                        f"({exc.rcvd or exc.sent}) instead of pong or error")  # fmt: skip
        assert reply["type"] in ("pong", "error"), reply
        if reply["type"] == "error":
            assert reply["code"] in EITHER
        c.send({"type": "ping", "t": 2})
        assert c.expect("pong")["t"] == 2
        bystander.finish(server)


def test_ten_mib_frame_closes_1009_without_buffering_it(server_factory, server):
    """A 10 MiB frame closes 1009 and the server's memory does not grow by anything like it."""
    srv = server_factory(server.kind)
    room = new_room()
    with Bystander(srv.url, room) as bystander:
        before = rss(srv)
        with RawClient(srv.url) as attacker:
            attacker.send_json({"type": "hello", "name": "big"})
            assert attacker.next_json()["type"] == "welcome"
            size = 10 * MIB
            # Only the header: the payload follows in chunks, as a real sender would.
            header = masked_frame(b"", length=size)
            sending_failed: list[BaseException] = []

            def send_payload() -> None:
                try:
                    attacker.sock.sendall(header)
                    chunk = b"x" * 65536
                    for _ in range(size // len(chunk)):
                        attacker.sock.sendall(chunk)
                except OSError as exc:  # the server closed: expected
                    sending_failed.append(exc)

            sender = threading.Thread(target=send_payload, daemon=True)
            sender.start()
            assert attacker.close_code() == 1009
            sender.join(TIMEOUT)
        after = rss(srv)
        assert after - before < 4 * MIB, f"RSS grew by {(after - before) / MIB:.1f} MiB"
        bystander.finish(srv)


def test_flood_of_2000_messages(server):
    """2,000 says at once: the burst is delivered, then rate_limited, then close 1008."""
    room = new_room()
    metrics_before = server.metrics_text()
    with Bystander(server.url, room) as bystander, RawClient(server.url) as flooder:
        flooder.hello("flooder")
        flooder.join(room)
        frames = b"".join(
            masked_frame(f'{{"type":"say","room":"{room}","text":"f{n}"}}'.encode())
            for n in range(2000)
        )
        try:
            flooder.sock.sendall(frames)
        except OSError:
            pass  # closed with 1008 before it took them all
        replies = []
        try:
            while True:
                replies.append(flooder.next_json())
        except EOFError:
            pass
        assert flooder.protocol.close_rcvd is not None
        assert flooder.protocol.close_rcvd.code == 1008
        errors = [m["code"] for m in replies if m["type"] == "error"]
        delivered = [
            m["text"] for m in replies if m["type"] == "message" and m["from"] == "flooder"
        ]
        assert errors and set(errors) == {"rate_limited"}
        assert 1 <= len(delivered) <= 60  # the burst (40) and what refilled meanwhile
        assert delivered == [f"f{n}" for n in range(len(delivered))]
        bystander.finish(server)
    flooded = [m for m in bystander.received if m["from"] == "flooder"]
    assert [m["text"] for m in flooded] == delivered
    after = server.metrics_text()
    grew = metric_value(after, "chat_disconnects_total", reason="rate_limit") - metric_value(
        metrics_before, "chat_disconnects_total", reason="rate_limit"
    )
    assert grew == 1


MANY_HEADERS = b"".join(b"X-H%d: v\r\n" % n for n in range(200))
PARTIAL_REQUEST = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"


@pytest.mark.parametrize("style", ["silent", "partial", "drip"])
def test_slowloris_handshake_dropped(server_factory, server, style):
    """A handshake that never finishes is dropped within --open-timeout, others unaffected."""
    open_timeout = 2.0
    srv = server_factory(server.kind, "--open-timeout", str(open_timeout))
    room = new_room()
    with Bystander(srv.url, room) as bystander:
        socks = []
        for _ in range(20):
            sock = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
            if style != "silent":
                sock.sendall(PARTIAL_REQUEST)
            socks.append(sock)
        started = time.monotonic()
        dropped_after = []
        for sock in socks:
            while True:
                if style == "drip" and time.monotonic() - started < 3 * open_timeout:
                    try:
                        sock.sendall(b"X")  # one more byte of a header that never ends
                    except OSError:
                        break
                sock.settimeout(0.3 if style == "drip" else open_timeout + 5)
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    if time.monotonic() - started > open_timeout + 5:
                        break
                    continue
                except ConnectionResetError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 4"):
                    break
            dropped_after.append(time.monotonic() - started)
            sock.close()
        # Bound from the protocol (open_timeout) with generous slack for a noisy machine.
        assert max(dropped_after) < open_timeout + 5, dropped_after
        with ChatClient(srv.url) as late:  # the server still takes new clients
            late.hello()
        bystander.finish(srv)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n", b"431"),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n" + MANY_HEADERS + b"\r\n", b"431"),
    ],
    ids=["request-line-10k", "header-10k", "200-headers"],
)
def test_oversized_request_rejected(server, request_bytes, status):
    """Request lines and headers beyond the websockets library's caps get 414 / 431."""
    room = new_room()
    with Bystander(server.url, room) as bystander:
        reply = raw_request(server.host, server.port, request_bytes)
        assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]
        bystander.finish(server)


def test_garbage_request_closed(server):
    """Bytes that are not HTTP at all: the connection is closed, the server goes on."""
    room = new_room()
    with Bystander(server.url, room) as bystander:
        reply = raw_request(server.host, server.port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        assert not reply.startswith(b"HTTP/1.1 101")
        bystander.finish(server)


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "http://evil.example",
        "http://good.example.evil.example",
        "null",
        "HTTP://GOOD.EXAMPLE",
    ],
)
def test_bad_origin_refused_403(server_factory, server, origin):
    """With --allowed-origin, a missing or different Origin gets 403; the page still loads."""
    srv = server_factory(server.kind, "--allowed-origin", "http://good.example")
    room = new_room()
    with Bystander(srv.url, room, origin="http://good.example") as bystander:
        kwargs = {"origin": origin} if origin else {}
        with pytest.raises(InvalidStatus) as info:
            ChatClient(srv.url, **kwargs)
        assert info.value.response.status_code == 403
        status = raw_request(srv.host, srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        assert status.startswith(b"HTTP/1.1 200")
        bystander.finish(srv)


def test_fragmented_messages_reassembled(server):
    """Messages sent in fragments, with a ping between them and UTF-8 split mid-character,
    arrive whole."""
    room = new_room()
    with Bystander(server.url, room) as bystander, RawClient(server.url) as c:
        c.hello("frag")
        c.join(room)
        text = "héllo wörld " * 300  # about 4 KB; 'é' is 2 bytes in UTF-8
        payload = f'{{"type":"say","room":"{room}","text":"{text}","id":"f1"}}'.encode()
        cut = payload.index("é".encode()) + 1  # split inside the 2-byte character
        pieces = [payload[:cut], payload[cut : cut + 7], payload[cut + 7 : 2000], payload[2000:]]
        c.protocol.send_text(pieces[0], fin=False)
        c.protocol.send_continuation(pieces[1], fin=False)
        c.protocol.send_ping(b"mid")  # control frames may come between fragments
        c.protocol.send_continuation(pieces[2], fin=False)
        c.protocol.send_continuation(pieces[3], fin=True)
        c.flush()
        message = c.next_json(skip_others=True)
        assert (message["type"], message["id"], message["text"]) == ("message", "f1", text)
        # one byte per fragment: still one message
        payload = b'{"type":"ping","t":"one byte at a time"}'
        c.protocol.send_text(payload[:1], fin=False)
        for i in range(1, len(payload)):
            c.protocol.send_continuation(payload[i : i + 1], fin=i == len(payload) - 1)
        c.flush()
        assert c.next_json(skip_others=True) == {"type": "pong", "t": "one byte at a time"}
        bystander.finish(server)
    assert [m["text"] for m in bystander.received if m["from"] == "frag"] == [text]


def test_fragments_over_max_size_close_1009(server):
    """Small fragments adding up past max_frame_bytes close with 1009."""
    room = new_room()
    with Bystander(server.url, room) as bystander, RawClient(server.url) as c:
        c.send_json({"type": "hello", "name": "fragbig"})
        assert c.next_json()["type"] == "welcome"
        c.protocol.send_text(b'{"type":"ping","t":"', fin=False)
        try:
            for _ in range(20):  # 20 x 4 KiB = 80 KiB > 64 KiB
                c.protocol.send_continuation(b"x" * 4096, fin=False)
                c.flush()
        except OSError:
            pass
        assert c.close_code() == 1009
        bystander.finish(server)


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_frames_pipelined_with_handshake(server):
    """Frames sent in the same segment as the upgrade request are handled, not dropped."""
    room = new_room()
    with (
        Bystander(server.url, room) as bystander,
        socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock,
    ):
        sock.sendall(
            UPGRADE
            + masked_frame(b'{"type":"hello","name":"eager"}')
            + masked_frame(f'{{"type":"join","room":"{room}"}}'.encode())
            + masked_frame(f'{{"type":"say","room":"{room}","text":"early"}}'.encode())
        )
        assert bystander.wait_presence("eager", "join", 5) is not None, "pipelined frames lost"
        bystander.finish(server)
    assert [m["text"] for m in bystander.received if m["from"] == "eager"] == ["early"]


def test_compression_off_by_default(server):
    """permessage-deflate is not negotiated unless --compression deflate is given."""
    with ChatClient(server.url, compression="deflate") as c:
        extensions = c.ws.response.headers.get("Sec-WebSocket-Extensions")
        assert extensions is None
        c.hello()


def test_deflate_bomb_closes_1009(server_factory, server):
    """With --compression deflate, a small compressed frame that inflates past max size closes
    1009, and the server's memory does not grow with the inflated size."""
    srv = server_factory(server.kind, "--compression", "deflate")
    room = new_room()
    with Bystander(srv.url, room, compression="deflate") as bystander:
        extensions = bystander.client.ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in extensions
        before = rss(srv)
        bomb_plain = b'{"type":"ping","t":"' + b"x" * (50 * MIB) + b'"}'
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = compressor.compress(bomb_plain) + compressor.flush(zlib.Z_SYNC_FLUSH)
        bomb = bomb[:-4]  # permessage-deflate strips the trailing 00 00 ff ff
        assert len(bomb) < 100 * 1024
        with ChatClient(srv.url, compression="deflate") as bomber:
            bomber.hello()
            # Already compressed: written past the client's own deflate.
            bomber.ws.socket.sendall(masked_frame(bomb, rsv1=True))
            assert close_code(bomber) == 1009
        after = rss(srv)
        assert after - before < 8 * MIB, f"RSS grew by {(after - before) / MIB:.1f} MiB"
        # Compression still works for ordinary messages.
        with ChatClient(srv.url, compression="deflate") as c:
            c.hello()
            c.join(room)
            c.say(room, "z" * 4000)
            assert c.messages(1)[0]["text"] == "z" * 4000
        bystander.finish(srv)


def test_healthz_and_metrics_survive_the_battery(server):
    """After everything above, the module's server still serves /healthz and /metrics."""
    assert server.proc.poll() is None
    assert server.healthz()["status"] == "ok"
    assert wait_for(lambda: server.healthz()["connections"] == 0, timeout=TIMEOUT)
    assert "chat_connections" in server.metrics_text()
