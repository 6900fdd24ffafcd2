"""The client's WebSocket: the one place a session reads or writes it.

It hands the client's text frames to the session and refuses binary ones;
it writes server events (and, for a relayed session, the upstream's frames)
one at a time, in the order they were given, however many of the session's
tasks write.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from .protocol import ServerEvent, binary_frame_error, encode


class ClientFrames(Protocol):
    """What takes the client's frames: a session."""

    @property
    def reading(self) -> bool:
        """Whether the session still reads the client's frames."""

    def heard(self) -> None:
        """The client sent a frame (its idle time starts again)."""

    async def on_text(self, text: str) -> None:
        """One text frame from the client."""


class ClientSocket:
    """One client's WebSocket, upgraded by the endpoint, served by one session."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        #: One frame written at a time: the order they were given in is the order sent.
        self._writing = asyncio.Lock()

    @property
    def closed(self) -> bool:
        """Whether the socket is closed (or closing)."""
        return self._ws.closed

    @property
    def close_code(self) -> int:
        """The code the socket was closed with, by either side (1006 when no close frame
        was exchanged: the connection was lost)."""
        return self._ws.close_code or WSCloseCode.ABNORMAL_CLOSURE

    async def accept(self, request: web.Request) -> None:
        """Answer the client's upgrade."""
        await self._ws.prepare(request)

    async def read(self, frames: ClientFrames) -> None:
        """Hand the client's frames to ``frames`` until the client leaves or the session
        reads no more; a binary frame is answered with an ``error``."""
        async for message in self._ws:
            if message.type == WSMsgType.TEXT:
                frames.heard()
                await frames.on_text(message.data)
            elif message.type == WSMsgType.BINARY:
                frames.heard()
                await self.send(binary_frame_error())
            if not frames.reading:
                return

    async def send(self, event: ServerEvent) -> None:
        """Send ``event``, unless the client has gone (then it is dropped)."""
        async with self._writing:
            if self._ws.closed:
                return
            with contextlib.suppress(ConnectionError):
                await self._ws.send_str(encode(event))

    async def relay_text(self, text: str) -> None:
        """Pass on an upstream's text frame as it is; a client gone raises."""
        async with self._writing:
            await self._ws.send_str(text)

    async def relay_bytes(self, data: bytes) -> None:
        """Pass on an upstream's binary frame as it is; a client gone raises."""
        async with self._writing:
            await self._ws.send_bytes(data)

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` (nothing, if it is closed already)."""
        with contextlib.suppress(Exception):
            await self._ws.close(code=code, message=reason.encode())

    async def end_with(self, event: ServerEvent, code: int, reason: str) -> None:
        """Tell the client why its session ends, and close."""
        await self.send(event)
        await self.close(code, reason)

    async def release(self) -> None:
        """Close the socket if the session left it open."""
        if self._ws.prepared and not self._ws.closed:
            await self._ws.close()
