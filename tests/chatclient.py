"""A small blocking chat client for the tests, on the websockets sync client."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection, connect

TIMEOUT = 10.0  # upper bound on any single wait; tests never assert durations

_names = itertools.count(1)


class ChatClient:
    """One WebSocket connection speaking the twinchat protocol."""

    def __init__(self, url: str, **connect_kwargs: Any) -> None:
        connect_kwargs.setdefault("open_timeout", TIMEOUT)
        connect_kwargs.setdefault("close_timeout", 2)
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(url, **connect_kwargs))
        self.name = ""

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            message = json.dumps(message)
        self.ws.send(message)

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout))

    def expect(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Receive the next message and check its type."""
        message = self.recv(timeout)
        assert message["type"] == kind, message
        return message

    def hello(self, name: str | None = None) -> dict[str, Any]:
        self.name = name or f"user{next(_names)}"
        self.send({"type": "hello", "name": self.name})
        return self.expect("welcome")

    def join(self, room: str, since: int | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "join", "room": room}
        if since is not None:
            message["since"] = since
        self.send(message)
        return self.expect("joined")

    def say(self, room: str, text: str, **extra: Any) -> None:
        self.send({"type": "say", "room": room, "text": text, **extra})

    def messages(self, count: int, kind: str = "message") -> list[dict[str, Any]]:
        """Receive ``count`` messages of ``kind``, skipping presence notices."""
        received = []
        while len(received) < count:
            message = self.recv()
            if message["type"] == "presence" and kind != "presence":
                continue
            assert message["type"] == kind, message
            received.append(message)
        return received


def wait_for(
    predicate: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.05
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return whether it became true.

    The one way the tests wait for a fact (a count, a message, a state) instead of
    sleeping for a guessed time; the timeout only bounds a failing test.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition, or 0.0 when absent."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def http_get(url: str, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``; return status, headers and body, for 4xx/5xx too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
