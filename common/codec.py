"""JSON encoding and decoding, in one place so the library can be swapped.

orjson returns UTF-8 bytes, which both servers send as text frames without
re-encoding. Decoding accepts ``str`` or ``bytes``.
"""

from __future__ import annotations

from typing import Any

import orjson

DecodeError = orjson.JSONDecodeError


def encode(obj: dict[str, Any]) -> bytes:
    """Serialize a server message to compact UTF-8 JSON.

    orjson's result sits in a 4 KiB allocation whatever its length; messages
    are kept (room history, an idle connection's last reply), so the bytes are
    copied to an object of their own size (measured: 69 bytes cost 4,090
    before, 195 after; the copy costs about 0.5 µs, once per message).
    """
    return bytes(memoryview(orjson.dumps(obj)))


def decode(data: str | bytes) -> Any:
    """Parse JSON text; raise :data:`DecodeError` on invalid input."""
    return orjson.loads(data)
