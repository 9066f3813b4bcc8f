"""Rooms shared across processes through Redis, on redis-py's asyncio client.

The protocol (keys, Lua scripts, envelopes, gap handling) is in
:mod:`common.broker`; this adapter only does the I/O, on the server's event
loop: one command connection pool, one pattern subscription, and a position
check every second that catches messages pub/sub lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as redis
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

logger = logging.getLogger("twinchat.async.broker")

RETRY_DELAY = 0.5
STOP_WAIT = 2.0  # seconds stop() waits for the broker's tasks to end


class RedisBroker:
    """Publishes says, counts members and delivers messages of shared rooms.

    ``deliver(outcome)`` is the server's, called on the loop's thread, as
    every call into the core.
    """

    def __init__(
        self,
        url: str,
        core: SharedChatCore,
        deliver: Callable[[Outcome], None],
        *,
        position_check_interval: float = proto.POSITION_CHECK_INTERVAL,
    ) -> None:
        self.core = core
        self._deliver = deliver
        self.process_id = proto.new_process_id()
        self.position_check_interval = position_check_interval
        pool = redis.BlockingConnectionPool.from_url(url, **proto.POOL_OPTIONS)
        self.redis = redis.Redis.from_pool(pool)
        self._publish = self.redis.register_script(proto.PUBLISH_SCRIPT)
        self._presence = self.redis.register_script(proto.PRESENCE_SCRIPT)
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._catch_up_lock = asyncio.Lock()
        # Removals from presence that failed, by (session id, room), resent every
        # position check; and the ones being resent, which a join of the same
        # session and room must wait for (its add must land after the removal).
        self._unsent: dict[tuple[str, str], PresenceChange] = {}
        self._resending: dict[tuple[str, str], asyncio.Event] = {}

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._subscribe_forever()),
            asyncio.create_task(self._check_positions_forever()),
        ]

    async def stop(self) -> None:
        """Stop subscribing and checking, forget this process in Redis, close the pool.

        Returns within about ``STOP_WAIT`` + ``TIMEOUT`` s, Redis or not: a task whose
        cancellation a Redis call lost (a pool wait timing out as the cancel arrives
        raises a RedisError instead) ends at its next turn, when it sees ``_stopping``.
        """
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        pending = (await asyncio.wait(self._tasks, timeout=STOP_WAIT))[1] if self._tasks else ()
        if pending:
            logger.warning("%d broker tasks did not stop within %.0f s", len(pending), STOP_WAIT)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(proto.process_key(self.process_id))
        await self.redis.aclose()

    # Work from the core

    async def handle(self, outcome: Outcome) -> None:
        """Do the broker work an outcome asks for, delivering what comes of it."""
        assert isinstance(outcome, SharedOutcome)
        if outcome.publish is not None:
            await self._publish_say(outcome.publish)
        if outcome.join is not None:
            await self._join(outcome.join)
        for change in outcome.presence:
            await self._change_presence(change)

    async def _publish_say(self, say: PendingSay) -> None:
        keys, args = proto.publish_args(say.room, say.head, say.tail, self.core.limits.history_size)
        try:
            await self._publish(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            metrics.broker_error(BrokerOperation.PUBLISH)
            logger.warning("publish failed: %s", exc)
            self._deliver(self.core.unavailable(say.session, say.ref))

    async def _join(self, join: PendingJoin) -> None:
        """Count and announce the member, read seq and history; then complete the join."""
        key = (join.session.id, join.room)
        self._unsent.pop(key, None)  # this join sets the membership anyway
        resending = self._resending.get(key)
        if resending is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(proto.RESEND_WAIT):
                    await resending.wait()
        try:
            replies = await self._join_round_trip(join)
        except (RedisError, OSError) as exc:
            metrics.broker_error(BrokerOperation.JOIN)
            logger.warning("join failed: %s", exc)
            self._deliver(self.core.unavailable(join.session))
            # The add may have run before the error: take it back, later if need be.
            self._keep_unsent(PresenceChange(join.session, join.room, -1))
            return
        seq, history, members = proto.parse_join_replies(replies, join.since, join.fetch_seq)
        # From complete_join on, the session is a member and gets the room's
        # messages: ``joined`` must be written before anything else can be, so
        # nothing is awaited between the two.
        self._deliver(
            self.core.complete_join(join.session, join, seq=seq, members=members, history=history)
        )
        if join.room not in join.session.rooms:  # it closed while the join was in flight
            await self._change_presence(PresenceChange(join.session, join.room, -1))

    async def _join_round_trip(self, join: PendingJoin) -> list:
        """Send :func:`common.broker.queue_join`'s commands in one pipeline; return the answers.

        EVALSHA is sent directly: for a registered script redis-py would first
        ask SCRIPT EXISTS, a second round trip. A Redis that lost its script
        cache (a restart) answers NOSCRIPT: the script did not run, so it is
        loaded and the pipeline (reads before it) sent again.
        """

        async def send() -> list:
            async with self.redis.pipeline(transaction=False) as pipe:
                proto.queue_join(
                    pipe, join.room, join.since, join.fetch_seq, self.process_id,
                    join.session.id, join.session.name, self._presence.sha,
                )  # fmt: skip
                return await pipe.execute()

        try:
            return await send()
        except NoScriptError:
            await self.redis.script_load(proto.PRESENCE_SCRIPT)
            return await send()

    async def _change_presence(self, change: PresenceChange) -> bool:
        """Count and announce a member leaving (or joining): one script call.

        A removal that fails is kept and resent by the position check (the
        script is idempotent). Returns False on failure.
        """
        session = change.session
        keys, args = proto.presence_args(
            change.room, self.process_id, change.delta, session.id, session.name
        )
        try:
            await self._presence(keys=keys, args=args)
            return True
        except (RedisError, OSError) as exc:
            metrics.broker_error(BrokerOperation.PRESENCE)
            logger.warning("presence update failed: %s", exc)
            if change.delta < 0:
                self._keep_unsent(change)
            return False

    def _keep_unsent(self, change: PresenceChange) -> None:
        if len(self._unsent) < proto.MAX_UNSENT_PRESENCE:
            self._unsent[change.session.id, change.room] = change
        else:
            logger.warning("too many presence updates to resend; dropping one")

    async def _resend_presence(self) -> None:
        """Resend the presence removals that failed, oldest first; stop at a failure."""
        for key in list(self._unsent):
            if self._stopping:
                return
            change = self._unsent.pop(key, None)
            if change is None or change.room in change.session.rooms:
                continue  # a join of the same session and room took its place
            done = self._resending[key] = asyncio.Event()
            try:
                sent = await self._change_presence(change)
            finally:
                del self._resending[key]
                done.set()
            if not sent:
                return
            logger.info("resent presence: %s left %s", key[0], change.room)

    # Messages from Redis

    async def _subscribe_forever(self) -> None:
        while not self._stopping:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(proto.CHANNEL_PATTERN)
                logger.info("subscribed to %s", proto.CHANNEL_PATTERN)
                await self._check_positions()  # what was published while we were away
                async for message in pubsub.listen():
                    if message["type"] == "pmessage":
                        await self._receive(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                metrics.broker_error(BrokerOperation.SUBSCRIBE)
                logger.warning("subscription lost: %s; retrying", exc)
                await asyncio.sleep(RETRY_DELAY)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _receive(self, channel: bytes, data: bytes) -> None:
        envelope = proto.parse_envelope(channel, data)
        if envelope is None:
            return
        if envelope.kind is proto.Kind.PRESENCE:
            outcome = self.core.deliver_presence(envelope.room, envelope.origin, envelope.payload)
            self._deliver(outcome)
            return
        await self._deliver_message(envelope.room, envelope.seq, envelope.payload)

    async def _deliver_message(self, room: str, seq: int, payload: bytes) -> None:
        outcome = self.core.deliver(room, seq, payload)
        self._deliver(outcome)
        if outcome.gap is not None:
            await self._catch_up(room, outcome.gap.delivered, seq)
            outcome = self.core.deliver(room, seq, payload)
            self._deliver(outcome)
        metrics.delivered_from_broker(outcome.delivered, payload)

    async def _check_positions_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.position_check_interval)
            try:
                await self.redis.set(proto.process_key(self.process_id), 1, ex=proto.PROCESS_TTL)
                await self._check_positions()
                await self._resend_presence()
            except (RedisError, OSError) as exc:
                metrics.broker_error(BrokerOperation.CATCH_UP)
                logger.warning("position check failed: %s", exc)

    async def _check_positions(self) -> None:
        """Compare each local room's last delivered seq with Redis; fix what differs."""
        rooms = self.core.local_rooms()
        if not rooms:
            return
        names = list(rooms)
        remote = await self.redis.mget([proto.seq_key(name) for name in names])
        for name, value in zip(names, remote, strict=True):
            seq = int(value or 0)
            local = self.core.local_seq(name)
            if local is None:
                continue
            if seq > local:
                await self._catch_up(name, local, seq)
            elif seq < rooms[name]:
                # Seqs only grow at Redis, and this read came after the snapshot
                # in ``rooms`` (messages delivered meanwhile are newer than it).
                # So Redis lost this room (restarted without persistence).
                logger.warning("room %s went back from seq %d to %d", name, local, seq)
                await self._lose_room(name, seq, "room state lost, rejoin")

    async def _catch_up(self, room: str, after: int, upto: int) -> None:
        """Deliver the messages after..upto of ``room`` from history, in order."""
        async with self._catch_up_lock:
            try:
                entries = await self.redis.zrangebyscore(
                    proto.history_key(room), after + 1, upto, withscores=True
                )
            except (RedisError, OSError) as exc:
                metrics.broker_error(BrokerOperation.CATCH_UP)
                logger.warning("catch-up of %s failed: %s", room, exc)
                return
            for payload, score in entries:
                outcome = self.core.deliver(room, int(score), payload)
                self._deliver(outcome)
                if outcome.gap is not None:
                    break
                metrics.BROKER_RECOVERED.inc()
                metrics.MESSAGES_DELIVERED.inc(outcome.delivered)
            local = self.core.local_seq(room)
            if local is not None and local < upto:
                logger.warning("room %s: messages %d..%d are gone from history", room, local, upto)
                await self._lose_room(room, upto, "missed messages, rejoin")

    async def _lose_room(self, room: str, seq: int, text: str) -> None:
        outcome = self.core.lose_room(room, seq, text)
        self._deliver(outcome)
        for change in outcome.presence:
            await self._change_presence(change)


class LocalRooms:
    """``--broker memory``: rooms live in this process only, so there is no broker work."""

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def handle(self, outcome: Outcome) -> None:
        """Nothing to do: the in-memory core already sent everything."""


def plug(
    config: ServerConfig,
    implementation: str,
    deliver: Callable[[Outcome], None],
) -> tuple[ChatCore, LocalRooms | RedisBroker]:
    """The chat core and its broker for ``config.broker``: the one place a server picks them.

    ``deliver`` is the server's: the broker calls it on the loop's thread.
    """
    screening = config.screening.enabled
    if config.broker == "memory":
        return ChatCore(implementation, config.limits, screening=screening), LocalRooms()
    core = SharedChatCore(implementation, config.limits, screening=screening)
    return core, RedisBroker(config.broker, core, deliver)
