"""One receive loop per Locust process: an epoll over every chat socket, read in ticks.

A greenlet per connection costs a gevent wake-up and two greenlet switches
for every frame it reads. Here one ``select.epoll`` holds every chat socket
of the process (registered after the connection's handshake), and one
repeating libev timer of gevent's hub calls :meth:`Reactor.drain` every
``TICK`` (5 ms): ``epoll.poll(0)`` returns every ready socket, and each
one's reader does one ``recvmsg`` of up to 64 KiB and handles every complete
frame in it. One wake-up serves every socket that became ready during the
tick, where waking up at each ready socket served 1.5-2 (docs/loadtest.md:
the process woke 10,000 times a second for 20,000 messages, and each wake-up
cost a context switch on both CPUs). A message may so wait up to a tick in
its socket; its latency does not include that wait, since every socket has
the kernel stamp each segment's arrival (:mod:`loadtest.client.transport`).

Readers run inside gevent's hub, so they must never block: no waiting on a
lock, a socket or a greenlet. Anything that may wait (answering a ping,
sending a close frame) is handed to a new greenlet. An exception raised by a
reader is logged and the reader's connection is torn down by its owner; it
never reaches the hub.

The reactor also owns the process's :class:`~loadtest.client.heartbeat.Heartbeat`
(the idle clients' pings, sent from the hub too) and its
:class:`~loadtest.client.stats.BatchedStats`, hooked to the environment's
events: flushed every second, everything flushed when a test stops (before
Locust's final report and CSV rows), and discarded when Locust resets its
statistics.

Use :func:`reactor_for` to get the reactor of an environment in this
process; it is created on first use, after Locust's ``--processes`` fork.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import Protocol

import gevent
from gevent import monkey

from loadtest.client.heartbeat import Heartbeat
from loadtest.client.stats import BatchedStats

logger = logging.getLogger(__name__)

# gevent's monkey-patching removes epoll from the select module: take the original.
epoll, EPOLLIN = monkey.get_original("select", ["epoll", "EPOLLIN"])
MAX_EVENTS = 4096  # sockets handled per tick at most; the rest at the next tick
TICK = 0.005  # seconds between two reads of the ready sockets (pongs wait up to this too)


class Reader(Protocol):
    def on_readable(self) -> None:
        """The socket has data (or EOF, or an error). Must not block."""

    def on_reader_error(self, exc: Exception) -> None:
        """``on_readable`` raised ``exc``: report it and tear the connection down."""


class Reactor:
    """Reads the chat sockets of one process. Not thread-safe: gevent only."""

    def __init__(self, stats: BatchedStats) -> None:
        self.stats = stats
        self.heartbeat = Heartbeat()
        self.pid = os.getpid()
        self._epoll = epoll()
        self._readers: dict[int, Reader] = {}
        loop = gevent.get_hub().loop
        # ref=False: an idle reactor does not keep gevent's loop alive by itself.
        self._timer = loop.timer(TICK, TICK, ref=False)
        self._timer.start(self.drain)

    def __len__(self) -> int:
        return len(self._readers)

    def add(self, fd: int, reader: Reader) -> None:
        """Start reading ``fd`` (level-triggered) with ``reader``."""
        self._readers[fd] = reader
        self._epoll.register(fd, EPOLLIN)

    def remove(self, fd: int) -> None:
        """Stop reading ``fd``. Call it before the socket is closed."""
        if self._readers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:  # already closed
                pass

    def drain(self) -> None:
        """Handle every ready socket (the hub calls this every tick)."""
        readers = self._readers
        for fd, _events in self._epoll.poll(0, MAX_EVENTS):
            reader = readers.get(fd)
            if reader is None:
                continue
            try:
                reader.on_readable()
            except Exception as exc:
                logger.exception("chat client receive path failed")
                try:
                    reader.on_reader_error(exc)
                except Exception:
                    logger.exception("chat client teardown failed")
                    self.remove(fd)


_reactors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reactor_for(environment, request_type: str = "WS") -> Reactor:
    """The reactor of ``environment`` in this process (created, and hooked, on first use)."""
    reactor = _reactors.get(environment)
    if reactor is not None and reactor.pid == os.getpid():
        reactor.stats.stats = environment.stats  # a worker runner replaces it once
        return reactor
    stats = BatchedStats(environment.stats, request_type)
    reactor = Reactor(stats)
    _reactors[environment] = reactor
    stats.start(time.time)
    events = environment.events

    def flush_all(**_kwargs) -> None:
        stats.flush(time.time(), everything=True)

    def reset(**_kwargs) -> None:
        stats.discard()

    def reset_after_spawning(**_kwargs) -> None:
        if environment.reset_stats:  # Locust resets its stats at this moment (--reset-stats)
            stats.discard()

    events.test_stop.add_listener(flush_all)
    events.reset_stats.add_listener(reset)
    events.spawning_complete.add_listener(reset_after_spawning)
    events.quitting.add_listener(lambda **_: (stats.stop(), reactor.heartbeat.stop()))
    return reactor
