"""A bystander that makes no blocking call: the round trip of its pings, once per interval.

``python -m loadtest.claims.probe URL OUT`` connects to a server (hello, no
room), then sends a ``ping`` every :data:`INTERVAL` s and writes one line per
answer to ``OUT``: the wall-clock time the ping was sent and its round trip in
seconds (an answer that never comes counts as :data:`TIMEOUT`). It runs until
it is terminated, in a process of its own so that the runner's own work does
not add to its round trips. The blocking scenario reads its p99 over each
step's judged window: how long a request that needs no screening waited
behind someone else's.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

INTERVAL = 0.1
TIMEOUT = 10.0


def run(url: str, out: Path) -> None:
    stopping = False

    def stop(*_) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    with out.open("w") as file, connect(url, open_timeout=TIMEOUT, close_timeout=1) as ws:
        ws.send(json.dumps({"type": "hello", "name": "probe"}))
        json.loads(ws.recv(TIMEOUT))
        count = 0
        while not stopping:
            count += 1
            sent = time.time()
            ws.send(json.dumps({"type": "ping", "t": count}))
            rtt = _pong(ws, count, sent)
            file.write(f"{sent:.3f} {rtt:.6f}\n")
            file.flush()
            time.sleep(max(0.0, INTERVAL - (time.time() - sent)))


def _pong(ws, count: int, sent: float) -> float:
    """Seconds until the pong of ping ``count``, at most TIMEOUT."""
    while True:
        left = TIMEOUT - (time.time() - sent)
        if left <= 0:
            return TIMEOUT
        try:
            message = json.loads(ws.recv(left))
        except TimeoutError:
            return TIMEOUT
        if message.get("type") == "pong" and message.get("t") == count:
            return time.time() - sent


def read(path: Path, start: float, end: float) -> list[float]:
    """Round trips (s) of the pings sent within ``[start, end]``."""
    if not path.exists():
        return []
    pings = (map(float, line.split()) for line in path.read_text().splitlines())
    return [rtt for sent, rtt in pings if start <= sent <= end]


def p99(values: list[float]) -> float | None:
    """The 99th percentile (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


if __name__ == "__main__":
    try:
        run(sys.argv[1], Path(sys.argv[2]))
    except (OSError, ConnectionClosed, InvalidHandshake) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        sys.exit(1)
