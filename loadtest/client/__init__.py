"""The load generator's chat client: a cheap receive path that still checks everything.

- ``frames``: WebSocket framing (a parser for server frames, masked client frames);
- ``transport``: cooperative socket I/O and the HTTP upgrade;
- ``reactor``: one epoll per process reading every chat socket, one gevent watcher;
- ``stats``: successful samples merged into Locust's statistics once a second;
- ``chat``: ``ChatClient``, one connection: operations, receive path, seq checks;
- ``errors``: the failures it reports.
"""

from loadtest.client.chat import ChatClient

__all__ = ["ChatClient"]
