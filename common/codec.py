"""JSON encoding and decoding, in one place so the library can be swapped.

orjson returns UTF-8 bytes, which both servers send as text frames without
re-encoding. Decoding accepts ``str`` or ``bytes``.
"""

from __future__ import annotations

from typing import Any

import orjson

DecodeError = orjson.JSONDecodeError


def encode(obj: dict[str, Any]) -> bytes:
    """Serialize a server message to compact UTF-8 JSON."""
    return orjson.dumps(obj)


def decode(data: str | bytes) -> Any:
    """Parse JSON text; raise :data:`DecodeError` on invalid input."""
    return orjson.loads(data)
