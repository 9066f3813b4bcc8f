"""Faults and overload, on both servers, each while a bystander keeps chatting in the room.

A client that stops reading, a peer that vanishes without a FIN, the connection
limit, the real fd limit, SIGTERM with messages still queued, and a reconnect
with ``since`` in the middle of traffic. The conformance suite has the simple
versions (slow consumer at a small backlog, 503 at two connections, 1001 to
three idle clients); these add the load, the bystander and the bounds.
"""

from __future__ import annotations

import resource
import signal
import socket
import threading
import time

import pytest
from chatclient import TIMEOUT, ChatClient, metric_value, wait_for
from hostile import Bystander, Relay, masked_frame, new_room, rss
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from loadtest import taskcap

MIB = 1024 * 1024
NO_RATE_LIMIT = ("--rate", "100000", "--burst", "100000")
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_slow_reader_dropped_memory_bounded(server_factory, server):
    """A client that stops reading while 24 MB goes through its room is dropped as
    slow_consumer; the bystander gets everything; server RSS stays far below the traffic."""
    srv = server_factory(server.kind, *NO_RATE_LIMIT)
    room = new_room("slow")
    with Bystander(srv.url, room, max_queue=None) as bystander:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect((srv.host, srv.port))
        slow.sendall(UPGRADE)
        response = b""
        while b"\r\n\r\n" not in response:
            response += slow.recv(1024)
        assert response.startswith(b"HTTP/1.1 101")
        slow.sendall(
            masked_frame(b'{"type":"hello","name":"slow"}')
            + masked_frame(f'{{"type":"join","room":"{room}"}}'.encode())
        )
        assert bystander.wait_presence("slow", "join", TIMEOUT)
        before = rss(srv)
        dropped_before = metric_value(srv.metrics_text(), "chat_disconnects_total",
                                      reason="slow_consumer")  # fmt: skip
        with ChatClient(srv.url, max_queue=None) as sender:
            sender.hello()
            sender.join(room)
            text = "s" * 4000
            for batch in range(60):  # 60 x 100 x 4 KB = 24 MB
                for n in range(100):
                    sender.say(room, text, id=f"{batch}-{n}")
                sender.messages(100)  # keep pace with the server: wait for our own acks
        after = rss(srv)
        assert bystander.wait_presence("slow", "leave", TIMEOUT)
        metrics = srv.metrics_text()
        assert (
            metric_value(metrics, "chat_disconnects_total", reason="slow_consumer")
            == dropped_before + 1
        )
        # max_backlog_bytes (1 MiB) per slow client plus history; 24 MB went through.
        assert after - before < 12 * MIB, f"RSS grew by {(after - before) / MIB:.1f} MiB"
        bystander.finish(srv)
        slow.close()
    assert len([m for m in bystander.received if m["text"] == text]) == 6000


def test_dead_peer_dropped_within_keepalive(server_factory, server):
    """A peer that vanishes (no close, no FIN) is dropped within ping_interval + ping_timeout,
    and the bystander gets its presence leave."""
    ping = 1.0  # --ping-interval and --ping-timeout
    srv = server_factory(server.kind, "--ping-interval", str(ping), "--ping-timeout", str(ping))
    room = new_room("dead")
    timeouts_before = metric_value(srv.metrics_text(), "chat_disconnects_total", reason="timeout")
    with Relay((srv.host, srv.port)) as relay, Bystander(srv.url, room) as bystander:
        ghost = ChatClient(relay.url(), ping_interval=None)
        try:
            ghost.hello("ghost")
            ghost.join(room)
            assert bystander.wait_presence("ghost", "join", TIMEOUT)
            time.sleep(2 * ping)  # answered a couple of pings: the keepalive works through it
            assert bystander.wait_presence("ghost", "leave", 0) is None
            relay.freeze()
            frozen_at = time.monotonic()
            # Protocol bound: interval + timeout; slack for a noisy machine and close_timeout.
            bound = 2 * ping + 5
            left_at = bystander.wait_presence("ghost", "leave", bound + 5)
            assert left_at is not None, "presence leave never came"
            assert left_at - frozen_at < bound, f"dropped after {left_at - frozen_at:.1f} s"
        finally:
            ghost.ws.socket.close()  # the relay holds the other end; nothing reaches the server
        metrics = srv.metrics_text()
        assert metric_value(metrics, "chat_disconnects_total", reason="timeout") == (
            timeouts_before + 1
        )
        bystander.finish(srv)


def test_max_connections_refusals_then_room_again(server_factory, server):
    """At --max-connections every extra handshake gets 503 and is counted; existing clients
    keep chatting; once some leave, that many get in again, and no more."""
    srv = server_factory(server.kind, "--max-connections", "6")
    room = new_room("cap")
    with Bystander(srv.url, room) as bystander:
        others = [ChatClient(srv.url) for _ in range(5)]
        for c in others:
            c.hello()
        for _ in range(10):
            with pytest.raises(InvalidStatus) as info:
                ChatClient(srv.url)
            assert info.value.response.status_code == 503
        metrics = srv.metrics_text()
        assert metric_value(metrics, "chat_connections_rejected_total", reason="capacity") == 10
        for c in others[:3]:
            c.close()
        assert wait_for(lambda: srv.healthz()["connections"] == 3)
        again = [ChatClient(srv.url) for _ in range(3)]
        for c in again:
            c.hello()
        with pytest.raises(InvalidStatus):
            ChatClient(srv.url)
        for c in others[3:] + again:
            c.send({"type": "ping", "t": 1})
            assert c.expect("pong")["t"] == 1
            c.close()
        bystander.finish(srv)


FD_LIMIT = 200


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_fd_limit_reached(server_factory, server):
    """With ulimit -n 200 and --max-connections 10000, the fd limit is what stops new clients:
    no crash, refusals counted, the bystander keeps chatting, room again once others close."""
    srv = server_factory(server.kind, "--max-connections", "10000", preexec_fn=_low_fd_limit)
    room = new_room("fd")
    metrics_before = srv.metrics_text()
    with Bystander(srv.url, room) as bystander:
        clients: list[ChatClient] = []
        failures: list[str] = []
        try:
            for _ in range(2 * FD_LIMIT):
                try:
                    c = ChatClient(srv.url, open_timeout=3)
                    c.hello()
                    clients.append(c)
                except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    if len(failures) >= 5:
                        break
            assert failures, f"{len(clients)} clients got in under a {FD_LIMIT} fd limit"
            assert len(clients) > FD_LIMIT // 2  # the limit hit was the fd limit, not less
            assert srv.proc.poll() is None, "server died at the fd limit"
            # The bystander chats on while the table is full.
            heard = len(bystander.received)
            assert wait_for(lambda: len(bystander.received) >= heard + 5)
            for c in clients[:50]:
                c.close()
            del clients[:50]
            assert wait_for(lambda: _healthz_connections(srv) <= len(clients) + 1, timeout=15)
            # New clients are accepted again (the server may retry accept() after a pause).
            assert wait_for(lambda: _try_client(srv), timeout=15), "no client accepted again"
            metrics = srv.metrics_text()
            refusals = sum(
                metric_value(metrics, "chat_connections_rejected_total", reason=r)
                - metric_value(metrics_before, "chat_connections_rejected_total", reason=r)
                for r in ("overload", "capacity")
            )
            saw_503 = any("503" in f for f in failures)
            assert refusals > 0 or saw_503, (
                f"{server.kind}: refusals at the fd limit not counted; clients saw {failures}"
            )
        finally:
            for c in clients:
                c.close()
        bystander.finish(srv)


TASK_CAP = 12  # the threaded server's own threads (main, metrics, drainer) and a few more


@pytest.mark.skipif(taskcap.available() is not None, reason=str(taskcap.available()))
def test_threaded_server_refuses_at_its_thread_wall(server_factory, tmp_path):
    """When the kernel refuses a new thread (a pids cgroup of 12 tasks, the same EAGAIN as at
    kernel.pid_max), the threaded server answers 503 counted as ``threads``, keeps chatting
    with the clients it has, keeps answering /metrics, and takes clients again once some leave."""
    cap = taskcap.TaskCap.create(TASK_CAP, "twinchat-test-wall")
    try:
        log = tmp_path / "server.log"
        srv = server_factory("threaded", preexec_fn=cap.enter, log_path=log)
        room = new_room("wall")
        with Bystander(srv.url, room) as bystander:
            clients: list[ChatClient] = []
            refused: list[int] = []
            try:
                for _ in range(3 * TASK_CAP):
                    try:
                        c = ChatClient(srv.url, open_timeout=3)
                    except InvalidStatus as exc:
                        refused.append(exc.response.status_code)
                        continue
                    c.hello()
                    clients.append(c)
                assert clients, "no client got in"
                assert refused and set(refused) == {503}, refused
                assert srv.proc.poll() is None, "server died at its thread wall"
                assert cap.refusals(), "the kernel refused no thread: the wall was not reached"
                metrics = srv.metrics_text()  # answers at the wall
                assert metric_value(
                    metrics, "chat_connections_rejected_total", reason="threads"
                ) == len(refused)
                heard = len(bystander.received)
                assert wait_for(lambda: len(bystander.received) >= heard + 5)
                for c in clients:
                    c.send({"type": "ping", "t": 7})
                    assert c.expect("pong")["t"] == 7
                clients.pop().close()
                assert wait_for(lambda: _try_client(srv), timeout=15), "no client accepted again"
            finally:
                for c in clients:
                    c.close()
            bystander.finish(srv)
        assert srv.stop() == 0
    finally:
        cap.remove()
    assert "cannot start a thread (can't start new thread) with" in log.read_text()


def _healthz_connections(srv) -> int:
    try:
        return srv.healthz()["connections"]
    except OSError:
        return 1 << 30


def _try_client(srv) -> bool:
    try:
        with ChatClient(srv.url, open_timeout=3) as c:
            c.hello()
        return True
    except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError):
        return False


def test_sigterm_with_messages_queued(server_factory, server):
    """SIGTERM while readers lag behind: every accepted message reaches every reader, in order,
    then 1001; the server exits 0 within --shutdown-timeout."""
    shutdown_timeout = 5.0
    srv = server_factory(server.kind, *NO_RATE_LIMIT, "--shutdown-timeout", str(shutdown_timeout))
    room = new_room("term")
    readers = [ChatClient(srv.url) for _ in range(4)]  # max_queue 16: they lag
    sender = ChatClient(srv.url, max_queue=None)
    try:
        for c in [*readers, sender]:
            c.hello()
            c.join(room)
        text = "q" * 2000
        for n in range(300):
            sender.say(room, text, id=str(n))
        # Every say reached the server (5 hellos, 5 joins, 300 says) before the signal.
        assert wait_for(
            lambda: metric_value(srv.metrics_text(), "chat_messages_received_total") >= 310
        )
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        def drain(c: ChatClient, out: list, codes: list) -> None:
            try:
                while True:
                    message = c.recv()
                    if message["type"] == "message":
                        out.append(message["seq"])
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)

        results = [([], []) for _ in range(5)]
        threads = [
            threading.Thread(target=drain, args=(c, *r), daemon=True)
            for c, r in zip([*readers, sender], results, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(3 * TIMEOUT)
        exit_code = srv.proc.wait(shutdown_timeout + 10)
        exited_after = time.monotonic() - signalled
        acked = results[-1][0]
        assert acked == list(range(1, len(acked) + 1)) and acked, "sender's acks"
        for seqs, codes in results:
            assert codes == [1001]
            assert seqs == acked, "a reader missed messages the server had accepted"
        assert exit_code == 0
        assert exited_after < shutdown_timeout + 3, f"exited after {exited_after:.1f} s"
    finally:
        for c in [*readers, sender]:
            c.close()


def test_reconnect_with_since_loses_nothing(server):
    """A client that drops and rejoins with since=last seq it saw gets exactly what it missed,
    then the live stream, with no gap and no duplicate, while the room keeps talking."""
    room = new_room("since")
    with Bystander(server.url, room) as bystander:
        seen: list[int] = []
        with ChatClient(server.url) as c:
            c.hello()
            joined = c.join(room)
            base = joined["seq"]
            seen += [m["seq"] for m in c.messages(5)]
        # The bystander says 10 more while we are away.
        assert wait_for(
            lambda: bystander.received and bystander.received[-1]["seq"] >= seen[-1] + 10
        )
        with ChatClient(server.url) as c:
            c.hello()
            joined = c.join(room, since=seen[-1])
            assert joined["complete"] is True
            assert joined["seq"] > seen[-1] + 3
            bystander.finish(server)
            last = bystander.received[-1]["seq"]
            while seen[-1] < last:
                seen.append(c.messages(1)[0]["seq"])
        assert seen == list(range(base + 1, last + 1))
