"""A small local moderation service: the other end of the servers' blocking call.

It speaks the wire format of :mod:`common.screening`: ``POST`` a JSON body
``{"text": ...}``, get ``{"allow": true}`` after :attr:`ModerationService.delay_ms`
milliseconds, or ``{"allow": false}`` when the text contains
:data:`FORBIDDEN`. A ``http.server.ThreadingHTTPServer`` (one thread per
request) on a free loopback port, so a slow answer delays only its own caller.
The claims run and the tests start it; ``delay_ms`` can be changed while it
runs.

    with ModerationService(delay_ms=20) as service:
        start_server("threaded", "--moderation-url", service.url)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FORBIDDEN = "forbidden"  # a text containing this word is refused
MAX_BODY_BYTES = 1 << 20


class ModerationService:
    """The service, started on ``host`` and a free port by :meth:`start` (or ``with``)."""

    def __init__(self, delay_ms: float = 0.0, host: str = "127.0.0.1") -> None:
        self.delay_ms = delay_ms
        self.requests = 0  # answered so far
        self.in_flight = 0  # being answered now
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="moderation", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/moderate"

    def start(self) -> ModerationService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ModerationService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _count(self, started: bool) -> None:
        with self._lock:
            if started:
                self.in_flight += 1
            else:
                self.in_flight -= 1
                self.requests += 1


def _handler_for(service: ModerationService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                self.send_error(400, "a JSON body is required")
                return
            try:
                text = str(json.loads(self.rfile.read(length))["text"])
            except (ValueError, KeyError, TypeError):
                self.send_error(400, 'expected {"text": ...}')
                return
            service._count(started=True)
            if service.delay_ms > 0:
                time.sleep(service.delay_ms / 1000.0)  # the service's own work, not the server's
            body = json.dumps({"allow": FORBIDDEN not in text.casefold().split()}).encode()
            service._count(started=False)  # before answering: the caller may go on at once
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            pass  # one line per request would be noise

    return Handler
