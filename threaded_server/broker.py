"""Rooms shared across processes through Redis, on redis-py's blocking client.

The protocol (keys, Lua scripts, envelopes, gap handling) is in
:mod:`common.broker`; this adapter only does the I/O, the threaded way:
connection threads call Redis and wait, and one ``broker`` thread listens to
the pattern subscription and checks room positions every second to catch
messages pub/sub lost. It mirrors ``async_server/broker.py`` line for line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import orjson
import redis
from redis.exceptions import NoScriptError, RedisError

from common import broker as proto
from common import metrics
from common.chat import ChatCore, Outcome, PendingJoin, PendingSay, PresenceChange

logger = logging.getLogger("twinchat.threaded.broker")

TIMEOUT = proto.TIMEOUT
RETRY_DELAY = 0.5
LISTEN_TIMEOUT = 0.2


class RedisBroker:
    """Publishes says, counts members and delivers messages of shared rooms.

    ``apply(produce)`` runs ``produce()`` on the core under the server's chat
    lock (``lock``) and delivers the outcome it returns.
    """

    def __init__(
        self,
        url: str,
        core: ChatCore,
        apply: Callable[[Callable[[], Outcome]], Outcome],
        lock: threading.Lock,
        *,
        position_check_interval: float = proto.POSITION_CHECK_INTERVAL,
    ) -> None:
        self.core = core
        self._apply = apply
        self._lock = lock  # the server's chat lock, for reading the core
        self.process_id = proto.new_process_id()
        self.position_check_interval = position_check_interval
        pool = redis.BlockingConnectionPool.from_url(url, **proto.POOL_OPTIONS)
        self.redis = redis.Redis.from_pool(pool)
        self._publish = self.redis.register_script(proto.PUBLISH_SCRIPT)
        self._presence = self.redis.register_script(proto.PRESENCE_SCRIPT)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen_forever, name="broker", daemon=True)
        self._catch_up_lock = threading.Lock()
        # Removals from presence that failed, by (session id, room), resent every
        # position check; and the ones being resent, which a join of the same
        # session and room must wait for (its add must land after the removal).
        self._unsent: dict[tuple[str, str], PresenceChange] = {}
        self._resending: dict[tuple[str, str], threading.Event] = {}
        self._unsent_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(TIMEOUT + 1)
        try:
            self.redis.delete(proto.process_key(self.process_id))
        except (RedisError, OSError):
            pass
        self.redis.close()

    # Work from the core (called by connection threads, chat lock not held)

    def handle(self, outcome: Outcome) -> None:
        """Do the broker work an outcome asks for, delivering what comes of it."""
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
            metrics.BROKER_ERRORS.labels("publish").inc()
            logger.warning("publish failed: %s", exc)
            self._apply(lambda: self.core.unavailable(say.session, say.ref))

    def _join(self, join: PendingJoin) -> None:
        """Count and announce the member, read seq and history; then complete the join."""
        key = (join.session.id, join.room)
        with self._unsent_lock:
            self._unsent.pop(key, None)  # this join sets the membership anyway
            resending = self._resending.get(key)
        if resending is not None:
            resending.wait(TIMEOUT * 2)
        try:
            replies = self._join_round_trip(join)
        except (RedisError, OSError) as exc:
            metrics.BROKER_ERRORS.labels("join").inc()
            logger.warning("join failed: %s", exc)
            self._apply(lambda: self.core.unavailable(join.session))
            # The add may have run before the error: take it back, later if need be.
            self._keep_unsent(PresenceChange(join.session, join.room, -1))
            return
        seq, history, members = proto.parse_join_replies(replies, join.since, join.is_new)
        # From complete_join on, the session is a member and gets the room's
        # messages: ``joined`` is sent under the same chat lock hold, so
        # nothing can be sent to it before.
        self._apply(
            lambda: self.core.complete_join(
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
                    pipe, join.room, join.since, join.is_new, self.process_id,
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
            metrics.BROKER_ERRORS.labels("presence").inc()
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

    # Messages from Redis (the broker thread)

    def _listen_forever(self) -> None:
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(proto.CHANNEL_PATTERN)
                logger.info("subscribed to %s", proto.CHANNEL_PATTERN)
                self._check_positions()  # what was published while we were away
                next_check = time.monotonic() + self.position_check_interval
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=LISTEN_TIMEOUT)
                    if message is not None and message["type"] == "pmessage":
                        self._receive(message["channel"], message["data"])
                    if time.monotonic() >= next_check:
                        self.redis.set(proto.process_key(self.process_id), 1, ex=proto.PROCESS_TTL)
                        self._check_positions()
                        self._resend_presence()
                        next_check = time.monotonic() + self.position_check_interval
            except (RedisError, OSError) as exc:
                metrics.BROKER_ERRORS.labels("subscribe").inc()
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
            self._apply(
                lambda: self.core.deliver_presence(envelope.room, envelope.origin, envelope.payload)
            )
            return
        self._deliver_message(envelope.room, envelope.seq, envelope.payload)

    def _deliver_message(self, room: str, seq: int, payload: bytes) -> None:
        outcome = self._apply(lambda: self.core.deliver(room, seq, payload))
        if outcome.gap is not None:
            self._catch_up(room, outcome.gap[1], seq)
            outcome = self._apply(lambda: self.core.deliver(room, seq, payload))
        if outcome.delivered:
            metrics.MESSAGES_DELIVERED.inc(outcome.delivered)
            _observe_fanout(payload)

    def _check_positions(self) -> None:
        """Compare each local room's last delivered seq with Redis; fix what differs."""
        rooms = self._local_rooms()
        if not rooms:
            return
        names = list(rooms)
        remote = self.redis.mget([proto.seq_key(name) for name in names])
        for name, value in zip(names, remote, strict=True):
            seq = int(value or 0)
            local = self._local_rooms().get(name)
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
                metrics.BROKER_ERRORS.labels("catch_up").inc()
                logger.warning("catch-up of %s failed: %s", room, exc)
                return
            for payload, score in entries:
                outcome = self._apply(lambda p=payload, s=score: self.core.deliver(room, int(s), p))
                if outcome.gap is not None:
                    break
                metrics.BROKER_RECOVERED.inc()
                metrics.MESSAGES_DELIVERED.inc(outcome.delivered)
            local = self._local_rooms().get(room)
            if local is not None and local < upto:
                logger.warning("room %s: messages %d..%d are gone from history", room, local, upto)
                self._lose_room(room, upto, "missed messages, rejoin")

    def _local_rooms(self) -> dict[str, int]:
        with self._lock:
            return self.core.local_rooms()

    def _lose_room(self, room: str, seq: int, text: str) -> None:
        outcome = self._apply(lambda: self.core.lose_room(room, seq, text))
        for change in outcome.presence:
            self._change_presence(change)


def _observe_fanout(payload: bytes) -> None:
    """Fan-out latency of a shared room: from the say's server timestamp to now."""
    try:
        metrics.FANOUT_SECONDS.observe(max(0.0, time.time() - orjson.loads(payload)["ts"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
