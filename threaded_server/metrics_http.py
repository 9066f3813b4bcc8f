"""/metrics on its own port, served by one thread started with the server.

prometheus_client's ``start_http_server`` starts a new thread for every
scrape (a ``ThreadingWSGIServer``). At the thread limit, the moment its
figures matter most, every scrape would then fail. This is the same
exposition, served one scrape at a time by a thread that exists from the start.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

READ_TIMEOUT = 5.0  # seconds a scraper may take to send its request


class _Handler(WSGIRequestHandler):
    timeout = READ_TIMEOUT  # a silent client cannot hold the only thread

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per scrape is noise


def serve_metrics(host: str, port: int) -> WSGIServer | None:
    """Serve the default registry at any path on ``host:port`` from one daemon thread;
    ``None`` when port is 0. Stop it with ``shutdown()``."""
    if not port:
        return None
    server = make_server(host, port, make_wsgi_app(), handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
