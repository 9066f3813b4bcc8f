"""The load generator's chat client: a cheap receive path that still checks everything.

- ``frames``: WebSocket framing (a parser for server frames, masked client frames);
- ``transport``: cooperative socket I/O, the HTTP upgrade, kernel arrival stamps;
- ``reactor``: one epoll per process reading every chat socket, every 5 ms;
- ``stats``: successful samples merged into Locust's statistics once a second;
- ``chat``: ``ChatClient``, one connection: operations, receive path, seq checks;
- ``errors``: the failures it reports.

Import ``ChatClient`` from ``loadtest.client.chat``: this package imports nothing itself, so
that ``loadtest.client.frames`` can be used (and tested) without importing Locust, whose
import monkey-patches the whole process with gevent.
"""
