"""Screening a ``say`` before it is accepted: the policy, for both servers.

Off by default. Two kinds of screening can be turned on, each standing for
a kind of code the article talks about:

- a **content filter** (``--say-cpu-ms MS``): pure-Python work over the text,
  ``MS`` milliseconds of the calling thread's CPU per say — CPU-bound code,
  which holds the GIL while it runs;
- a **moderation call** (``--moderation-url URL``): a synchronous HTTP request
  with ``urllib`` to a moderation service — an existing blocking library.

Rules:

1. The core never screens itself. With screening on, a valid ``say`` from a
   member is not published by :meth:`~common.chat.ChatCore.receive`: its
   :class:`~common.chat.Outcome` carries ``screen`` (a :class:`PendingScreen`)
   and nothing to send. The server runs the screening (``blocking.screen``,
   the one implementation of both kinds) and hands the :class:`Verdict` to
   :meth:`~common.chat.ChatCore.complete_screen`, which publishes the message
   or answers the sender.
2. Where the server runs it is the lesson, so each server says so in its
   code: the threaded server in the sender's own thread, *outside*
   ``chat_lock`` (inside it, one slow call would stall every room); the async
   server on the event loop as written (``--screen-in loop``, the default:
   every connection waits while it runs) or in a worker thread
   (``--screen-in thread``: ``asyncio.to_thread``, the default executor).
3. Verdicts, and what the sender gets (the connection always stays open):

   - ``allow``: the message is published as usual;
   - ``reject`` (the service said no): an ``error`` with code ``rejected``;
   - ``failed`` (the service did not answer within ``moderation_timeout``,
     refused the connection, answered a status other than 200 or a body
     that is not ``{"allow": true|false}``): an ``error`` with code
     ``unavailable``. The message is not published (fail closed: an
     unmoderated message never reaches a room), and the sender may send it
     again.

   Both are counted in ``chat_messages_dropped_total`` (reasons ``rejected``
   and ``unscreened``).
4. A member that left the room (or a connection that ended) while its say
   was being screened: ``not_joined`` (or nothing), as for any say.

The moderation service's wire format: ``POST`` the JSON body
``{"text": ...}`` (:func:`moderation_request`), answer 200 with
``{"allow": true}`` or ``{"allow": false}`` (:func:`verdict_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from common import codec
from common.messages import Say

SCREEN_IN = ("loop", "thread")  # where the async server runs the screening


class Verdict(StrEnum):
    """What screening decided about one say."""

    ALLOW = "allow"
    REJECT = "reject"
    FAILED = "failed"  # the moderation service did not give a usable answer


@dataclass(frozen=True, slots=True)
class Screening:
    """The screening options (all off by default)."""

    moderation_url: str | None = None  # POST each say's text here (http:// only)
    moderation_timeout: float = 2.0  # seconds each socket operation of the call may take
    say_cpu_ms: float = 0.0  # ms of pure-Python CPU work per say (the content filter)
    screen_in: str = "loop"  # async server only: "loop" or "thread"

    def __post_init__(self) -> None:
        if self.moderation_url is not None and not self.moderation_url.startswith("http://"):
            raise ValueError("--moderation-url must be an http:// URL")
        if self.moderation_timeout <= 0:
            raise ValueError("--moderation-timeout must be positive")
        if self.say_cpu_ms < 0:
            raise ValueError("--say-cpu-ms must be 0 or more")
        if self.screen_in not in SCREEN_IN:
            raise ValueError(f"--screen-in must be one of {', '.join(SCREEN_IN)}")

    @property
    def enabled(self) -> bool:
        return self.moderation_url is not None or self.say_cpu_ms > 0


@dataclass(frozen=True, slots=True)
class PendingScreen:
    """A say waiting for its verdict: the room it was said in, and the say itself."""

    room: str
    say: Say


def moderation_request(text: str) -> bytes:
    """The body to POST to the moderation service for ``text``."""
    return codec.encode({"text": text})


def verdict_of(status: int, body: bytes) -> Verdict:
    """The verdict in the moderation service's answer; anything unexpected is ``failed``."""
    if status != 200:
        return Verdict.FAILED
    try:
        answer = codec.decode(body)
    except ValueError:
        return Verdict.FAILED
    allow = answer.get("allow") if isinstance(answer, dict) else None
    if allow is True:
        return Verdict.ALLOW
    if allow is False:
        return Verdict.REJECT
    return Verdict.FAILED
