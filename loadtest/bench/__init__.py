"""`make bench`: fan-out, CPU at a fixed rate, capacity and handshake rate of both servers.

Run with ``python -m loadtest.bench --size smoke|full``. The servers under
test (twinchat's threaded server, its asyncio server on uvloop and on the
standard loop, and the two bare references of :mod:`loadtest.bench.refs`)
run one at a time, pinned to one CPU; the load client
(:mod:`loadtest.bench.worker`, uvloop) runs in several processes pinned to
the other. Results go to ``reports/bench/<timestamp>/results.json`` and
``results.md``, and ``reports/bench/latest`` points at the newest run.
"""
