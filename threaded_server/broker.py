"""Rooms shared across processes through Redis, on redis-py's blocking client.

The protocol (keys, Lua scripts, envelopes, gap handling) is in
:mod:`common.broker`; this adapter only does the I/O, the threaded way:
connection threads call Redis and wait, one thread listens to the pattern
subscription, and another checks room positions every second to catch
messages pub/sub lost. It mirrors ``async_server/broker.py`` line for line;
the core is only touched under the server's chat lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
from redis.exceptions import NoScriptError, RedisError

from common import broker as proto
from common import metrics
from common.chat import ChatCore, Outcome
from common.config import ServerConfig
from common.reasons import BrokerOperation
from common.shared import (
    PendingJoin,
    PendingSay,
    PresenceChange,
    SharedChatCore,
    SharedOutcome,
)

logger = logging.getLogger("twinchat.threaded.broker")

TIMEOUT = proto.TIMEOUT
RETRY_DELAY = 0.5
LISTEN_TIMEOUT = 0.2


class RedisBroker:
    """Publishes says, counts members and delivers messages of shared rooms.

    ``deliver(outcome)`` is the server's, called with ``lock`` (the server's
    chat lock) held, as every call into the core.
    """

    def __init__(
        self,
        url: str,
        core: SharedChatCore,
        deliver: Callable[[Outcome], None],
        lock: threading.Lock,
        *,
        position_check_interval: float = proto.POSITION_CHECK_INTERVAL,
    ) -> None:
        self.core = core
        self._deliver = deliver
        self._lock = lock  # the server's chat lock
        self.process_id = proto.new_process_id()
        self.position_check_interval = position_check_interval
        pool = redis.BlockingConnectionPool.from_url(url, **proto.POOL_OPTIONS)
        self.redis = redis.Redis.from_pool(pool)
        self._publish = self.redis.register_script(proto.PUBLISH_SCRIPT)
        self._presence = self.redis.register_script(proto.PRESENCE_SCRIPT)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._catch_up_lock = threading.Lock()
        # Removals from presence that failed, by (session id, room), resent every
        # position check; and the ones being resent, which a join of the same
        # session and room must wait for (its add must land after the removal).
        self._unsent: dict[tuple[str, str], PresenceChange] = {}
        self._resending: dict[tuple[str, str], threading.Event] = {}
        self._unsent_lock = threading.Lock()

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._subscribe_forever, name="broker-sub", daemon=True),
            threading.Thread(
                target=self._check_positions_forever, name="broker-check", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(TIMEOUT + 1)
        try:
            self.redis.delete(proto.process_key(self.process_id))
        except (RedisError, OSError):
            pass
        self.redis.close()

    # Work from the core (called by connection threads, chat lock not held)

    def handle(self, outcome: Outcome) -> None:
        """Do the broker work an outcome asks for, delivering what comes of it."""
        assert isinstance(outcome, SharedOutcome)
        if outcome.publish is not None:
            self._publish_say(outcome.publish)
        if outcome.join is not None:
            self._join(outcome.join)
        for change in outcome.presence:
            self._change_presence(change)

    def _publish_say(self, say: PendingSay) -> None:
        keys, args = proto.publish_args(say.room, say.head, say.tail, self.core.limits.history_size)
        try:
            self._publish(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            metrics.broker_error(BrokerOperation.PUBLISH)
            logger.warning("publish failed: %s", exc)
            with self._lock:
                self._deliver(self.core.unavailable(say.session, say.ref))

    def _join(self, join: PendingJoin) -> None:
        """Count and announce the member, read seq and history; then complete the join."""
        key = (join.session.id, join.room)
        with self._unsent_lock:
            self._unsent.pop(key, None)  # this join sets the membership anyway
            resending = self._resending.get(key)
        if resending is not None:
            resending.wait(proto.RESEND_WAIT)
        try:
            replies = self._join_round_trip(join)
        except (RedisError, OSError) as exc:
            metrics.broker_error(BrokerOperation.JOIN)
            logger.warning("join failed: %s", exc)
            with self._lock:
                self._deliver(self.core.unavailable(join.session))
            # The add may have run before the error: take it back, later if need be.
            self._keep_unsent(PresenceChange(join.session, join.room, -1))
            return
        seq, history, members = proto.parse_join_replies(replies, join.since, join.fetch_seq)
        # From complete_join on, the session is a member and gets the room's
        # messages: ``joined`` must be sent before anything else can be, so
        # both happen under one hold of the chat lock.
        with self._lock:
            self._deliver(
                self.core.complete_join(
                    join.session, join, seq=seq, members=members, history=history
                )
            )
        if join.room not in join.session.rooms:  # it closed while the join was in flight
            self._change_presence(PresenceChange(join.session, join.room, -1))

    def _join_round_trip(self, join: PendingJoin) -> list:
        """Send :func:`common.broker.queue_join`'s commands in one pipeline; return the answers.

        EVALSHA is sent directly: for a registered script redis-py would first
        ask SCRIPT EXISTS, a second round trip. A Redis that lost its script
        cache (a restart) answers NOSCRIPT: the script did not run, so it is
        loaded and the pipeline (reads before it) sent again.
        """

        def send() -> list:
            with self.redis.pipeline(transaction=False) as pipe:
                proto.queue_join(
                    pipe, join.room, join.since, join.fetch_seq, self.process_id,
                    join.session.id, join.session.name, self._presence.sha,
                )  # fmt: skip
                return pipe.execute()

        try:
            return send()
        except NoScriptError:
            self.redis.script_load(proto.PRESENCE_SCRIPT)
            return send()

    def _change_presence(self, change: PresenceChange) -> bool:
        """Count and announce a member leaving (or joining): one script call.

        A removal that fails is kept and resent by the position check (the
        script is idempotent). Returns False on failure.
        """
        session = change.session
        keys, args = proto.presence_args(
            change.room, self.process_id, change.delta, session.id, session.name
        )
        try:
            self._presence(keys=keys, args=args)
            return True
        except (RedisError, OSError) as exc:
            metrics.broker_error(BrokerOperation.PRESENCE)
            logger.warning("presence update failed: %s", exc)
            if change.delta < 0:
                self._keep_unsent(change)
            return False

    def _keep_unsent(self, change: PresenceChange) -> None:
        with self._unsent_lock:
            if len(self._unsent) < proto.MAX_UNSENT_PRESENCE:
                self._unsent[change.session.id, change.room] = change
                return
        logger.warning("too many presence updates to resend; dropping one")

    def _resend_presence(self) -> None:
        """Resend the presence removals that failed, oldest first; stop at a failure."""
        with self._unsent_lock:
            keys = list(self._unsent)
        for key in keys:
            with self._unsent_lock:
                change = self._unsent.pop(key, None)
                if change is None or change.room in change.session.rooms:
                    continue  # a join of the same session and room took its place
                done = self._resending[key] = threading.Event()
            try:
                sent = self._change_presence(change)
            finally:
                with self._unsent_lock:
                    del self._resending[key]
                done.set()
            if not sent:
                return
            logger.info("resent presence: %s left %s", key[0], change.room)

    # Messages from Redis

    def _subscribe_forever(self) -> None:
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(proto.CHANNEL_PATTERN)
                logger.info("subscribed to %s", proto.CHANNEL_PATTERN)
                self._check_positions()  # what was published while we were away
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=LISTEN_TIMEOUT)
                    if message is not None and message["type"] == "pmessage":
                        self._receive(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                metrics.broker_error(BrokerOperation.SUBSCRIBE)
                logger.warning("subscription lost: %s; retrying", exc)
                self._stopping.wait(RETRY_DELAY)
            finally:
                try:
                    pubsub.close()
                except (RedisError, OSError):
                    pass

    def _receive(self, channel: bytes, data: bytes) -> None:
        envelope = proto.parse_envelope(channel, data)
        if envelope is None:
            return
        if envelope.kind is proto.Kind.PRESENCE:
            with self._lock:
                outcome = self.core.deliver_presence(
                    envelope.room, envelope.origin, envelope.payload
                )
                self._deliver(outcome)
            return
        self._deliver_message(envelope.room, envelope.seq, envelope.payload)

    def _deliver_message(self, room: str, seq: int, payload: bytes) -> None:
        with self._lock:
            outcome = self.core.deliver(room, seq, payload)
            self._deliver(outcome)
        if outcome.gap is not None:
            self._catch_up(room, outcome.gap.delivered, seq)
            with self._lock:
                outcome = self.core.deliver(room, seq, payload)
                self._deliver(outcome)
        metrics.delivered_from_broker(outcome.delivered, payload)

    def _check_positions_forever(self) -> None:
        while not self._stopping.wait(self.position_check_interval):
            try:
                self.redis.set(proto.process_key(self.process_id), 1, ex=proto.PROCESS_TTL)
                self._check_positions()
                self._resend_presence()
            except (RedisError, OSError) as exc:
                metrics.broker_error(BrokerOperation.CATCH_UP)
                logger.warning("position check failed: %s", exc)

    def _check_positions(self) -> None:
        """Compare each local room's last delivered seq with Redis; fix what differs."""
        rooms = self._local_rooms()
        if not rooms:
            return
        names = list(rooms)
        remote = self.redis.mget([proto.seq_key(name) for name in names])
        for name, value in zip(names, remote, strict=True):
            seq = int(value or 0)
            with self._lock:
                local = self.core.local_seq(name)
            if local is None:
                continue
            if seq > local:
                self._catch_up(name, local, seq)
            elif seq < rooms[name]:
                # Seqs only grow at Redis, and this read came after the snapshot
                # in ``rooms`` (messages delivered meanwhile are newer than it).
                # So Redis lost this room (restarted without persistence).
                logger.warning("room %s went back from seq %d to %d", name, local, seq)
                self._lose_room(name, seq, "room state lost, rejoin")

    def _catch_up(self, room: str, after: int, upto: int) -> None:
        """Deliver the messages after..upto of ``room`` from history, in order."""
        with self._catch_up_lock:
            try:
                entries = self.redis.zrangebyscore(
                    proto.history_key(room), after + 1, upto, withscores=True
                )
            except (RedisError, OSError) as exc:
                metrics.broker_error(BrokerOperation.CATCH_UP)
                logger.warning("catch-up of %s failed: %s", room, exc)
                return
            # Deliver, check and give up in one hold of the chat lock, as the async
            # adapter does between two awaits: a join completed in between would
            # otherwise look like a room still behind.
            lost = None
            with self._lock:
                for payload, score in entries:
                    outcome = self.core.deliver(room, int(score), payload)
                    self._deliver(outcome)
                    if outcome.gap is not None:
                        break
                    metrics.BROKER_RECOVERED.inc()
                    metrics.MESSAGES_DELIVERED.inc(outcome.delivered)
                local = self.core.local_seq(room)
                if local is not None and local < upto:
                    lost = self.core.lose_room(room, upto, "missed messages, rejoin")
                    self._deliver(lost)
            if lost is not None:
                logger.warning("room %s: messages %d..%d are gone from history", room, local, upto)
                for change in lost.presence:
                    self._change_presence(change)

    def _local_rooms(self) -> dict[str, int]:
        with self._lock:
            return self.core.local_rooms()

    def _lose_room(self, room: str, seq: int, text: str) -> None:
        with self._lock:
            outcome = self.core.lose_room(room, seq, text)
            self._deliver(outcome)
        for change in outcome.presence:
            self._change_presence(change)


class LocalRooms:
    """``--broker memory``: rooms live in this process only, so there is no broker work."""

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def handle(self, outcome: Outcome) -> None:
        """Nothing to do: the in-memory core already sent everything."""


def plug(
    config: ServerConfig,
    implementation: str,
    deliver: Callable[[Outcome], None],
    lock: threading.Lock,
) -> tuple[ChatCore, LocalRooms | RedisBroker]:
    """The chat core and its broker for ``config.broker``: the one place a server picks them.

    ``deliver`` and ``lock`` are the server's: the broker calls ``deliver``
    with ``lock`` (the chat lock) held.
    """
    screening = config.screening.enabled
    if config.broker == "memory":
        return ChatCore(implementation, config.limits, screening=screening), LocalRooms()
    core = SharedChatCore(implementation, config.limits, screening=screening)
    return core, RedisBroker(config.broker, core, deliver, lock)
