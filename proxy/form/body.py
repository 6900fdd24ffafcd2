"""The client's request body, read a piece at a time: each read timed, the total capped.

Whatever goes wrong on the client's side of a read is said here, once, in
the proxy's own errors: a client that stopped sending or sends too slowly
(408), one that went away (499), a body larger than allowed (413), a body
the HTTP layer could not frame (400).

Two clocks bound a body. Each read may wait at most ``body_idle_timeout_s``;
and all the reads together at most ``body_deadline_s`` plus a second for
every ``body_min_bytes_per_s`` bytes received, so a client that drips a byte
just inside the idle timeout is still cut off. Only time spent waiting for
the client counts: while the upstream holds the upload back, nobody reads.
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
        #: Seconds spent waiting for the client's bytes so far.
        self._waited = 0.0

    def arrived_whole(self) -> bool:
        """Whether the rest of a small body is already in aiohttp's buffer."""
        content = self._content
        return content.is_eof() and content.total_bytes <= BUFFERED_BODY_BYTES

    def client_gone(self) -> bool:
        """Whether the client's connection is closed (a body cut short is its leaving)."""
        return client_gone(self._request)

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
            # (A request with no body has aiohttp's empty stream, which says the same
            # end of a chunk for ever: its end is the end.)
            if data or not end_of_http_chunk or self._content.is_eof():
                return data

    def read_rest(self) -> bytes:
        """Everything left, for a body that has arrived whole: at hand, so never waited for."""
        try:
            data = self._content.read_nowait()
        except (ValueError, HttpProcessingError) as exc:
            raise self._malformed(exc) from exc
        self._after_read()
        return data

    async def read_all(self) -> bytes:
        """The whole body (a small JSON document, say), held to the same caps and clocks."""
        pieces = []
        while data := await self.read():
            pieces.append(data)
        return b"".join(pieces)

    async def _reading(self, read: Awaitable[bytes]) -> bytes:
        limits = self._limits
        allowed = (
            limits.body_deadline_s
            + self._content.total_bytes / limits.body_min_bytes_per_s
            - self._waited
        )
        idle = limits.body_idle_timeout_s
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async with asyncio.timeout(max(0.0, min(idle, allowed))):
                data = await read
        except TimeoutError:
            if allowed < idle:
                raise RequestTimeoutError(
                    f"the client sent its body slower than {limits.body_min_bytes_per_s} "
                    f"bytes a second (after the first {limits.body_deadline_s:g} s)",
                    code="request_body_too_slow",
                ) from None
            raise RequestTimeoutError(f"the client sent nothing for {idle:g} s") from None
        except ConnectionError as exc:
            raise ClientGoneError("the client closed the connection") from exc
        except (ValueError, HttpProcessingError) as exc:
            raise self._malformed(exc) from exc
        finally:
            self._waited += loop.time() - began
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


def client_gone(request: web.Request) -> bool:
    """Whether ``request``'s connection is closed, or closing: its client has left."""
    transport = request.transport
    return transport is None or transport.is_closing()
