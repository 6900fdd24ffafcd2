"""Server-sent events: the framing the proxy writes and the streams it reads upstream.

Every event is one ``data:`` line and a blank line, with no ``event:`` line.
Keepalives are comment lines: an ``event: ping`` with empty data crashes the
openai SDK.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from typing import Any

import orjson
from aiohttp import web

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"
HEADERS: Mapping[str, str] = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Tells nginx and similar proxies in front of us not to buffer the stream.
    "X-Accel-Buffering": "no",
}

#: One upstream event larger than this is not a transcript chunk.
MAX_EVENT_BYTES = 1024 * 1024


def encode_event(document: Mapping[str, Any]) -> bytes:
    """One event carrying ``document`` as JSON."""
    return b"data: " + orjson.dumps(document) + b"\n\n"


class EventStream:
    """An SSE response: each event is written and flushed as it is sent."""

    def __init__(self, request: web.Request, headers: Mapping[str, str] | None = None) -> None:
        self._request = request
        self.response = web.StreamResponse(headers={**HEADERS, **(headers or {})})
        #: When anything was last written (monotonic clock).
        self.last_write = time.monotonic()

    async def open(self) -> None:
        """Send the status line and headers."""
        await self.response.prepare(self._request)
        self.last_write = time.monotonic()

    async def send(self, document: Mapping[str, Any]) -> None:
        """Write one event; returns once it is handed to the socket."""
        await self._write(encode_event(document))

    async def keepalive(self) -> None:
        """Write a comment line, so idle connections are not timed out."""
        await self._write(KEEPALIVE)

    async def _write(self, data: bytes) -> None:
        # Each frame is one write: a keepalive can never land inside an event.
        await self.response.write(data)
        self.last_write = time.monotonic()

    async def close(self) -> None:
        """Write ``[DONE]`` and end the response."""
        await self.response.write(DONE)
        await self.response.write_eof()


class SSEFormatError(ValueError):
    """An upstream event stream broke the framing."""


async def read_events(lines: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
    """The ``data`` of each event in an upstream stream, as sent (``[DONE]`` included).

    ``lines`` are the stream's lines with their endings, as aiohttp's
    ``response.content`` yields them. Comments and ``event:``, ``id:`` and
    ``retry:`` fields are skipped; multi-line data is joined with newlines.
    """
    data: list[bytes] = []
    size = 0
    async for raw_line in lines:
        line = raw_line.rstrip(b"\r\n")
        if not line:
            if data:
                yield b"\n".join(data)
                data, size = [], 0
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            size += len(value)
            if size > MAX_EVENT_BYTES:
                raise SSEFormatError(f"an upstream event is larger than {MAX_EVENT_BYTES} bytes")
            data.append(value)
    if data:
        # The stream ended without the blank line that closes its last event.
        yield b"\n".join(data)
