"""A load-client worker process: uvloop, pinned to the client CPU, driven over a pipe.

The coordinator (:mod:`loadtest.bench.scenarios`) starts several workers and
sends each one command at a time; a worker answers every command with one
dict. Connections live from one command to the next (``close_all`` ends
them), so the coordinator can measure the server between steps.

Commands (``(name, kwargs)``):

* ``fanout_setup(host, port, chat, receivers, senders, room, worker, text_len, window)``:
  connect, ``hello`` and ``join`` (when ``chat``); answer the number connected.
* ``fanout_run(start, measure, end)``: at ``start`` (a ``time.monotonic()``
  instant, shared by all processes) senders begin; text frames received by
  every connection between ``measure`` and ``end`` are counted, with this
  process's CPU time over the same window.
* ``rate_run(start, measure, end, rate, offsets)``: from ``start``, sender i
  sends one ``say`` every ``1 / rate`` s, first at ``start + offsets[i]``
  (an open loop: it does not wait for its own copy); frames, acks and says
  sent between ``measure`` and ``end`` are counted, with this process's CPU
  time, its wake-ups and the latest any send left its schedule.
* ``open_idle(host, port, chat, upto, first_index, room_size, concurrency, timeout)``:
  open idle connections (``hello`` + ``join``) until this worker holds
  ``upto`` or one is refused.
* ``handshakes(host, port, chat, duration, concurrency, timeout)``: for
  ``duration`` seconds, connect + ``hello`` (or a ping for the references) +
  close, ``concurrency`` at a time; answer how many completed.
* ``close_all``, ``quit``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import resource
import time
import traceback
from multiprocessing.connection import Connection

from loadtest import pinning
from loadtest.bench.wsclient import PING_FRAME, CountingClient, Refused, connect, text_frame

SETUP_CONCURRENCY = 64
# Joining a room of N costs the server N presence messages: 5,000 joins send 12.5 million.
JOIN_TIMEOUT = 300.0
# Setup is not measured: a connection refused while the server is busy is tried again.
SETUP_ATTEMPTS = 3


def main(pipe: Connection, cpu: int | None) -> None:
    """Process entry point (multiprocessing spawn target)."""
    pinning.pin_self(cpu)
    import uvloop

    gc.freeze()
    uvloop.run(Worker(pipe).serve())


class Worker:
    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.clients: list[CountingClient] = []
        self.senders: list[CountingClient] = []

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue = asyncio.Queue()
        loop.add_reader(self.pipe.fileno(), lambda: commands.put_nowait(self.pipe.recv()))
        while True:
            name, kwargs = await commands.get()
            try:
                if name == "quit":
                    self._close_all()
                    self.pipe.send({"ok": True})
                    return
                reply = await getattr(self, name)(**kwargs)
            except Exception as exc:  # report, keep serving
                reply = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            self.pipe.send(reply)

    # Fan-out

    async def fanout_setup(
        self,
        host: str,
        port: int,
        chat: bool,
        receivers: int,
        senders: int,
        room: str,
        worker: int,
        text_len: int,
        window: int,
    ) -> dict:
        self.window = window
        errors: list[str] = []

        retries = 0

        async def join(name: str, marker: bytes | None) -> CountingClient | None:
            nonlocal retries
            for attempt in range(SETUP_ATTEMPTS):
                try:
                    # A server busy with the presence storm answers handshakes late.
                    client = await connect(host, port, marker, timeout=JOIN_TIMEOUT)
                    break
                except (OSError, Refused, TimeoutError) as exc:
                    if attempt == SETUP_ATTEMPTS - 1:
                        errors.append(repr(exc))
                        return None
                    retries += 1
                    await asyncio.sleep(0.5)
            if chat:
                client.send(text_frame(f'{{"type":"hello","name":"{name}"}}'))
                client.send(text_frame(f'{{"type":"join","room":"{room}"}}'))
                await asyncio.wait_for(client.wait_frames(2), JOIN_TIMEOUT)
            return client

        self.clients = await _gather_bounded(
            [join(f"r{worker}-{i}", None) for i in range(receivers)], SETUP_CONCURRENCY
        )
        self.senders = []
        for i in range(senders):
            marker = f"~s{worker}-{i}~"
            client = await join(f"s{worker}-{i}", marker.encode())
            if client is None:
                continue
            filler = "x" * max(0, text_len - len(marker))
            if chat:
                say = f'{{"type":"say","room":"{room}","text":"{marker}{filler}"}}'
            else:
                # What twinchat would deliver, so both carry as many bytes.
                say = (
                    f'{{"type":"message","room":"{room}","seq":1000000,"from":"s{worker}-{i}",'
                    f'"text":"{marker}{filler}","ts":1764072000.123456}}'
                )
            client.say_frame = text_frame(say)
            self.senders.append(client)
        self.clients = [c for c in self.clients if c is not None]
        return {
            "connected": len(self.clients) + len(self.senders),
            "retries": retries,
            "errors": errors[:5],
        }

    async def fanout_run(self, start: float, measure: float, end: float) -> dict:
        await _sleep_until(start)
        for sender in self.senders:
            # Each say that comes back sends the next one, until the window ends.
            sender.on_ack = functools.partial(sender.send, sender.say_frame)
            for _ in range(self.window):
                sender.send(sender.say_frame)
        counts = await self._count(measure, end)
        for sender in self.senders:
            sender.on_ack = None
        return {**counts, "lost_connections": self._lost()}

    async def rate_run(
        self, start: float, measure: float, end: float, rate: float, offsets: list[float]
    ) -> dict:
        period = 1.0 / rate
        sent = [0] * len(self.senders)
        lag = [0.0]  # the latest a send happened after its scheduled instant, in the window

        async def pace(index: int, client: CountingClient) -> None:
            due = start + offsets[index]
            while due < end:
                await _sleep_until(due)
                now = time.monotonic()
                if now >= end:
                    return
                client.send(client.say_frame)
                if now >= measure:
                    sent[index] += 1
                    lag[0] = max(lag[0], now - due)
                due += period  # a fixed schedule: a late send does not shift the next ones

        tasks = [asyncio.ensure_future(pace(i, c)) for i, c in enumerate(self.senders)]
        counts = await self._count(measure, end)
        await asyncio.gather(*tasks)
        return {
            **counts,
            "says": sum(sent),
            "max_send_lag": lag[0],
            "lost_connections": self._lost(),
        }

    async def _count(self, measure: float, end: float) -> dict:
        """Frames and acks received, CPU seconds and wake-ups, from ``measure`` to ``end``."""
        await _sleep_until(measure)
        before = self._totals()
        await _sleep_until(end)
        after = self._totals()
        return {key: after[key] - before[key] for key in after}

    def _totals(self) -> dict:
        return {
            "frames": sum(c.frames for c in self.clients + self.senders),
            "acks": sum(c.acks for c in self.senders),
            "cpu_seconds": time.process_time(),
            "seconds": time.monotonic(),
            # Voluntary context switches: each time this process waited for data and was
            # woken up again, which the sender's CPU pays for on loopback.
            "wakeups": resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw,
        }

    def _lost(self) -> int:
        return sum(not c.is_open for c in self.clients + self.senders)

    # Capacity

    async def open_idle(
        self,
        host: str,
        port: int,
        chat: bool,
        upto: int,
        first_index: int,
        room_size: int,
        concurrency: int,
        timeout: float,
    ) -> dict:
        refused: list[str] = []
        index = first_index + len(self.clients)

        async def one(i: int) -> CountingClient | None:
            if refused:
                return None
            try:
                client = await connect(host, port, timeout=timeout)
                if chat:
                    client.send(text_frame(f'{{"type":"hello","name":"i{i}"}}'))
                    client.send(text_frame(f'{{"type":"join","room":"idle-{i // room_size}"}}'))
                    await asyncio.wait_for(client.wait_frames(2), timeout)
                return client
            except (OSError, Refused, TimeoutError) as exc:
                refused.append(f"{type(exc).__name__}: {exc}")
                return None

        wanted = max(0, upto - len(self.clients))
        opened = await _gather_bounded([one(index + k) for k in range(wanted)], concurrency)
        self.clients.extend(c for c in opened if c is not None)
        self.clients = [c for c in self.clients if c.is_open]
        return {"held": len(self.clients), "refused": refused[:3], "stopped": bool(refused)}

    async def count_open(self) -> dict:
        return {"held": sum(1 for c in self.clients if c.is_open)}

    # Handshake rate

    async def handshakes(
        self, host: str, port: int, chat: bool, duration: float, concurrency: int, timeout: float
    ) -> dict:
        done = 0
        failures: list[str] = []
        hello = text_frame('{"type":"hello","name":"hs"}')
        cpu0, t0 = time.process_time(), time.monotonic()
        deadline = t0 + duration

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                try:
                    client = await connect(host, port, timeout=timeout)
                    client.send(hello if chat else PING_FRAME)
                    await asyncio.wait_for(client.wait_frames(1), timeout)
                    await client.close(timeout)
                    done += 1
                except (OSError, Refused, TimeoutError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        cpu1, t1 = time.process_time(), time.monotonic()
        return {
            "completed": done,
            "failed": len(failures),
            "failures": failures[:3],
            "seconds": t1 - t0,
            "cpu_seconds": cpu1 - cpu0,
        }

    async def close_all(self) -> dict:
        count = self._close_all()
        await asyncio.sleep(0.2)
        return {"closed": count}

    def _close_all(self) -> int:
        everyone = self.clients + self.senders
        for client in everyone:
            client.abort()
        self.clients, self.senders = [], []
        return len(everyone)


async def _sleep_until(instant: float) -> None:
    delay = instant - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _gather_bounded(coros: list, limit: int) -> list:
    """Run ``coros`` at most ``limit`` at a time; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro):
        async with semaphore:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))
