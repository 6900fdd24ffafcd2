"""The client's request body, read a piece at a time: each read timed, the total capped.

Whatever goes wrong on the client's side of a read is said here, once, in
the proxy's own errors: a client that stopped sending (408), one that went
away (499), a body larger than allowed (413), a body the HTTP layer could
not frame (400).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import ClientGoneError, MalformedBodyError, RequestTimeoutError
from .limits import BUFFERED_BODY_BYTES, FormLimits, too_large


class ClientBody:
    """One request's body as the form reader reads it.

    ``on_end`` is called once, when the last byte has been read.
    """

    def __init__(
        self, request: web.Request, limits: FormLimits, on_end: Callable[[], None]
    ) -> None:
        self._request = request
        self._content = request.content
        self._limits = limits
        self._on_end: Callable[[], None] | None = on_end

    def arrived_whole(self) -> bool:
        """Whether the rest of a small body is already in aiohttp's buffer."""
        content = self._content
        return content.is_eof() and content.total_bytes <= BUFFERED_BODY_BYTES

    def client_gone(self) -> bool:
        """Whether the client's connection is closed (a body cut short is its leaving)."""
        transport = self._request.transport
        return transport is None or transport.is_closing()

    async def read(self) -> bytes:
        """The next bytes as aiohttp received them; ``b""`` at the end.

        Each piece is the very object a socket read gave (at most the
        server's read buffer, 256 KiB): joining or splitting pieces would
        copy every byte of an upload once more.
        """
        return await self._reading(self._next_piece())

    async def _next_piece(self) -> bytes:
        # readchunk gives one buffered piece where read(n) would join or split
        # them, and readany join all; for a chunked body it also says where an
        # HTTP chunk ends, with an empty piece that is not the end of the body.
        while True:
            data, end_of_http_chunk = await self._content.readchunk()
            if data or not end_of_http_chunk:
                return data

    def read_rest(self) -> bytes:
        """Everything left, for a body that has arrived whole: at hand, so never waited for."""
        try:
            data = self._content.read_nowait()
        except (ValueError, HttpProcessingError) as exc:
            raise self._malformed(exc) from exc
        self._after_read()
        return data

    async def _reading(self, read: Awaitable[bytes]) -> bytes:
        try:
            async with asyncio.timeout(self._limits.body_idle_timeout_s):
                data = await read
        except TimeoutError:
            raise RequestTimeoutError(
                f"the client sent nothing for {self._limits.body_idle_timeout_s:g} s"
            ) from None
        except ConnectionError as exc:
            raise ClientGoneError("the client closed the connection") from exc
        except (ValueError, HttpProcessingError) as exc:
            raise self._malformed(exc) from exc
        self._after_read()
        return data

    def _malformed(self, exc: Exception) -> ClientGoneError | MalformedBodyError:
        if self.client_gone():
            return ClientGoneError("the client closed the connection")
        # aiohttp's message may quote body bytes: enough to locate the fault,
        # not a dump of the upload.
        return MalformedBodyError(f"malformed request body: {str(exc)[:200]}")

    def _after_read(self) -> None:
        if self._content.total_bytes > self._limits.max_body_bytes:
            raise too_large(self._limits)
        if self._on_end is not None and self._content.is_eof():
            self._on_end()
            self._on_end = None
