"""Blocking code a ``say`` may run before it is accepted: the article's "existing library".

:func:`screen` is the one implementation of the screening that
:mod:`common.screening` defines (its policy, verdicts and wire format live
there). Both servers call it, each where its model puts it: the threaded
server in the sender's thread outside ``chat_lock``, the async server on the
event loop or through ``asyncio.to_thread``. Both kinds of work here block the
caller on purpose, as the code a user brings along would:

- :func:`content_filter` is pure Python: it holds the GIL for as long as it
  runs;
- :func:`moderate` is a synchronous HTTP request with ``urllib``: it waits in
  socket calls (which release the GIL, but not an event loop).
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request

from common.screening import Screening, Verdict, moderation_request, verdict_of

MAX_ANSWER_BYTES = 4096
BANNED_WORDS = frozenset({"spam", "scam", "phishing"})

# Loopback services only: never route the call through an http_proxy of the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def screen(text: str, screening: Screening) -> Verdict:
    """Run the screening ``screening`` turns on over ``text``; blocks the caller.

    The content filter first (a banned word: ``reject``), then the moderation
    call. Never raises: a moderation call that fails is :attr:`Verdict.FAILED`.
    """
    if screening.say_cpu_ms > 0 and not content_filter(text, screening.say_cpu_ms):
        return Verdict.REJECT
    if screening.moderation_url is not None:
        return moderate(text, screening.moderation_url, screening.moderation_timeout)
    return Verdict.ALLOW


def content_filter(text: str, cpu_ms: float) -> bool:
    """True when ``text`` has no banned word; costs ``cpu_ms`` ms of this thread's CPU.

    A stand-in for a real filter's work (normalize, tokenize, hash each word,
    look it up), repeated over the text until the calling thread has used
    ``cpu_ms`` of CPU time (``time.thread_time``), so every say costs the same
    CPU however busy the machine is: a thread waiting for the GIL does not
    count.
    """
    deadline = time.thread_time() + cpu_ms / 1000.0
    clean = True
    while True:
        digest = 0
        for word in text.casefold().split():
            for char in word:
                digest = (digest * 31 + ord(char)) & 0xFFFFFFFF
            if word.strip(".,;:!?") in BANNED_WORDS:
                clean = False
        if time.thread_time() >= deadline:
            return clean


def moderate(text: str, url: str, timeout: float) -> Verdict:
    """POST ``text`` to the moderation service at ``url`` and return its verdict.

    ``timeout`` bounds each socket operation of the call (connect, send, each
    read), as ``urllib`` applies it. Refused, timed out, an HTTP error or an
    answer that is not a verdict: :attr:`Verdict.FAILED`.
    """
    request = urllib.request.Request(
        url,
        data=moderation_request(text),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            return verdict_of(response.status, response.read(MAX_ANSWER_BYTES))
    except urllib.error.HTTPError as exc:
        exc.close()
        return verdict_of(exc.code, b"")
    except (OSError, ValueError, http.client.HTTPException):
        return Verdict.FAILED
