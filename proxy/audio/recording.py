"""A live upload recorded to a spool as it is read, so that a later pass can replay it.

A retry or a fallback needs the upload again, while the client is still
sending it. One task, the pump, reads the client: it appends each piece to
the spool, then hands it to the pass that is sending, through a one-piece
mailbox (so memory stays flat). A pass that fails, even mid-piece, loses
nothing: the next one replays the spool, then takes up the mailbox where the
replay ends. Past ``max_bytes`` the recording stops and the upload goes on
streaming: a pass can still start over until a piece that was not recorded
has been handed out (the mailbox holds the first of them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from ..errors import NotReplayableError
from .spool import Spool

log = logging.getLogger(__name__)

_END = object()


class Recording:
    """``pieces`` read once, recorded, and given out again to every later pass."""

    def __init__(self, pieces: AsyncIterator[bytes], spool: Spool, max_bytes: int) -> None:
        self._spool = spool
        self._max_bytes = max_bytes
        #: Whether the recording stopped at ``max_bytes``.
        self.overflowed = False
        #: The upload's size, once a pass has reached its end.
        self.size: int | None = None
        #: Where the pieces handed out so far end (the furthest any pass got),
        #: and where the recorded ones end (their writes done or on their way).
        self._handed_out = 0
        self._recorded = 0
        self._passes = 0
        self._slot: tuple[int, bytes] | object | None = None
        self._failure: BaseException | None = None
        self._writing: asyncio.Future[None] | None = None
        self._changed = asyncio.Condition()
        self._pump = asyncio.create_task(self._read(pieces))

    async def _read(self, pieces: AsyncIterator[bytes]) -> None:
        offset = 0
        try:
            async for piece in pieces:
                # One spool write at a time, in order, each overlapping the
                # upstream's send of its piece: the disk is often the slowest
                # of the three.
                await self._write_finished()
                if not self.overflowed:
                    if self._spool.size + len(piece) > self._max_bytes:
                        self.overflowed = True
                        log.info("upload past the spool cap: no longer recorded")
                    else:
                        self._writing = asyncio.ensure_future(self._spool.append(piece))
                        self._recorded += len(piece)
                await self._put((offset, piece))
                offset += len(piece)
            await self._write_finished()
            await self._put(_END)
        except Exception as exc:  # handed to the pass waiting for the next piece
            async with self._changed:
                self._failure = exc
                self._changed.notify_all()

    async def _write_finished(self) -> None:
        """Wait for the spool write in flight, so the spool holds all it was given."""
        if self._writing is not None:
            await asyncio.shield(self._writing)

    async def _put(self, item: tuple[int, bytes] | object) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._slot is None)
            self._slot = item
            self._changed.notify_all()

    @property
    def replayable(self) -> bool:
        """Whether a pass can start over: all that was handed out is recorded."""
        return not self.overflowed or self._handed_out <= self._recorded

    async def pieces(self) -> AsyncIterator[bytes]:
        """The upload from its first byte: replayed from the spool, then live."""
        first_pass = self._passes == 0
        self._passes += 1
        position = 0
        if not first_pass:
            await self._write_finished()
            if not self.replayable:
                raise NotReplayableError(
                    f"the upload is larger than the spool limit of {self._max_bytes} "
                    "bytes, so it could not be sent again for a retry or fallback"
                )
            async for piece in self._spool.pieces(self._spool.size):
                position += len(piece)
                yield piece
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: self._slot is not None or self._failure is not None
                )
                item = self._slot
                if item is None:
                    assert self._failure is not None
                    raise self._failure
                if item is not _END:
                    self._slot = None
                    self._changed.notify_all()
            if item is _END:
                self.size = position
                return
            assert isinstance(item, tuple)
            offset, piece = item
            if offset + len(piece) <= position:
                continue  # replayed from the spool already
            start = position - offset if offset < position else 0
            position = offset + len(piece)
            # Counted before it is given: a pass that fails with it in hand has used it.
            self._handed_out = max(self._handed_out, position)
            yield piece[start:] if start else piece

    async def aclose(self) -> None:
        """Stop reading the client and release the spool."""
        self._pump.cancel()
        try:
            # Waited for, not awaited: a cancellation of our own caller still
            # reaches it, rather than being taken for the pump's.
            await asyncio.wait([self._pump])
            if self._writing is not None:
                await asyncio.wait([self._writing])
        finally:
            self._spool.close()
