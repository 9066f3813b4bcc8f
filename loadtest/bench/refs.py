"""The bare reference servers: the least each concurrency model needs to fan out a message.

    python -m loadtest.bench.refs asyncio --port 8100
    python -m loadtest.bench.refs threaded --port 8101

Both treat every connection as a member of one room and send every text
frame they receive, as received, to every connection (the sender included).
No chat protocol, no validation, no history, no rate limit, no metrics, no
logging: what twinchat's servers do on top of this is what the benchmark
prices, as a ratio to these.

* ``asyncio``: ``websockets.asyncio.server.serve`` on uvloop, a handler that
  calls ``broadcast()`` for each message (the pattern of websockets' docs).
* ``threaded``: one thread per connection doing blocking reads, WebSocket
  through websockets' Sans-I/O :class:`~websockets.server.ServerProtocol`;
  a frame is serialized once and written to each connection with
  ``sendall`` under that connection's lock. Thread stacks are 256 KiB, as
  twinchat's threaded server's default; TCP_NODELAY is set, as
  ``websockets.sync.server`` and asyncio's transports do.

Both stop on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import socket
import sys
import threading

MAX_SIZE = 65536
STACK_BYTES = 256 * 1024


# asyncio


async def serve_asyncio(host: str, port: int) -> None:
    from websockets.asyncio.server import broadcast, serve

    clients: set = set()

    async def handler(ws) -> None:
        clients.add(ws)
        try:
            async for message in ws:
                broadcast(clients, message)
        finally:
            clients.discard(ws)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port, compression=None, max_size=MAX_SIZE):
        await stop


# threads


class _Conn:
    __slots__ = ("lock", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()


def serve_threaded(host: str, port: int) -> None:
    from websockets.frames import Frame, Opcode
    from websockets.protocol import OPEN
    from websockets.server import ServerProtocol

    members: set[_Conn] = set()
    members_lock = threading.Lock()
    stopping = threading.Event()

    def handle(sock: socket.socket) -> None:
        protocol = ServerProtocol(max_size=MAX_SIZE)
        conn = _Conn(sock)
        try:
            while True:  # opening handshake
                data = sock.recv(MAX_SIZE)
                if not data:
                    return
                protocol.receive_data(data)
                events = protocol.events_received()
                if events:
                    break
            protocol.send_response(protocol.accept(events[0]))
            sock.sendall(b"".join(protocol.data_to_send()))
            if protocol.state is not OPEN:
                return
            with members_lock:
                members.add(conn)
            while True:
                data = sock.recv(MAX_SIZE)
                with conn.lock:
                    if data:
                        protocol.receive_data(data)
                    else:
                        protocol.receive_eof()
                    out = protocol.data_to_send()
                    sock.sendall(b"".join(out))
                for event in protocol.events_received():
                    if event.opcode is Opcode.TEXT:
                        frame = Frame(Opcode.TEXT, event.data).serialize(mask=False)
                        with members_lock:
                            targets = list(members)
                        for target in targets:
                            with target.lock:
                                try:
                                    target.sock.sendall(frame)
                                except OSError:
                                    pass
                if not data or b"" in out:
                    return
        except OSError:
            pass
        finally:
            with members_lock:
                members.discard(conn)
            sock.close()

    threading.stack_size(STACK_BYTES)
    listener = socket.create_server((host, port), backlog=1024)
    listener.settimeout(0.5)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.is_set():
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                stopping.wait(0.1)
                continue
            raise
        sock.settimeout(None)
        # As websockets.sync.server and asyncio's transports do: no Nagle delay.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(sock,), daemon=True).start()
    listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.refs", description=__doc__)
    parser.add_argument("model", choices=["asyncio", "threaded"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.model == "asyncio":
        import uvloop

        uvloop.run(serve_asyncio(args.host, args.port))
    else:
        serve_threaded(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
