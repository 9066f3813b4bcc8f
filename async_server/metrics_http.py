"""/metrics on its own port, served by the event loop itself.

prometheus_client's ``start_http_server`` would add a thread to a server whose
point is to have none; this is the same exposition, on an asyncio server.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT = 5.0


async def serve_metrics(host: str, port: int) -> asyncio.Server | None:
    """Serve the default registry at any path on ``host:port``; ``None`` when port is 0."""
    if not port:
        return None
    return await asyncio.start_server(_handle, host, port, reuse_address=True)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            await reader.readuntil(b"\r\n\r\n")
        body = generate_latest()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
            + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body
        )  # fmt: skip
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()
