"""``make compare``: both servers under the same stepped Locust load, one report.

The runner (:mod:`.runner`) starts each server in turn, drives it with the
project's locustfile and the step shape, samples the server's ``/metrics`` and
the load generator every second (:mod:`.sampler`), reduces each step to one row
and decides where the server hit its limit (:mod:`.steps`), then writes
``reports/<timestamp>/`` (:mod:`.report`, :mod:`.claims`, :mod:`.machine`).
See docs/compare.md.
"""
