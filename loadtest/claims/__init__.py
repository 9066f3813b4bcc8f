"""``make claims``: the article's claims that a chat climb cannot test, each by a scenario.

- :mod:`~loadtest.claims.blocking`: a blocking library call in every say
  (threads' "compatibility with blocking code", asyncio's "incompatibility
  with blocking libraries");
- :mod:`~loadtest.claims.cpubound`: pure-Python CPU work in every say, nothing
  pinned (the GIL, asyncio's "true parallelism");
- :mod:`~loadtest.claims.sharedstate`: the threaded server with its
  ``chat_lock`` taken away (shared state), and :mod:`~loadtest.codefacts`:
  locks, lock-order rules, lines and concurrency primitives of each server,
  facts about the code rather than measurements.

The load scenarios reuse ``make compare``'s runner (server start, sampler,
Locust, step rows) with fixed loads instead of a climb; verdicts are computed
by :mod:`~loadtest.claims.verdicts` with rules printed in the report.
"""
