"""Audio sources that can be read more than once: from memory, from a spool, or recorded live.

A retry or a fallback needs the upload again. :class:`BufferedAudio` and
:class:`SpooledAudio` hold the whole file already; :class:`ReplayableAudio`
records a live upload to a spool file while it streams through, so a later
attempt replays what was read and then goes on reading the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import IO

from ..errors import NotReplayableError
from ..models import AudioSource, FormField
from .spool import Spool

log = logging.getLogger(__name__)


class PassThroughAudio:
    """Another audio source's bytes passed on, for a subclass to watch or hold in ``chunks``."""

    def __init__(self, inner: AudioSource) -> None:
        self._inner = inner

    @property
    def filename(self) -> str:
        return self._inner.filename

    @property
    def content_type(self) -> str:
        return self._inner.content_type

    @property
    def size(self) -> int | None:
        return self._inner.size

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        return self._inner.trailing_fields

    @property
    def replayable(self) -> bool:
        return self._inner.replayable

    def chunks(self) -> AsyncIterator[bytes]:
        """The inner source's bytes, unchanged."""
        return self._inner.chunks()


class LiveAudio:
    """The file as it arrives from the client: one pass, no copy kept.

    ``pieces`` yields the file's bytes straight off the client socket and
    then reads the rest of the form; ``trailing_fields`` gives the fields
    the client sent after the file, once ``pieces`` is done.
    """

    def __init__(
        self,
        pieces: AsyncIterator[bytes],
        *,
        filename: str,
        content_type: str,
        trailing_fields: Callable[[], Sequence[FormField]],
    ) -> None:
        self._pieces = pieces
        self._trailing_fields = trailing_fields
        self._started = False
        self.filename = filename
        self.content_type = content_type
        self.size: int | None = None

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        """The fields sent after the file; complete once :meth:`chunks` ends."""
        return self._trailing_fields()

    @property
    def replayable(self) -> bool:
        """Never: nothing of it is kept."""
        return False

    def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes as they arrive (then the rest of the form is read)."""
        if self._started:
            raise RuntimeError("a live upload can be read only once")
        self._started = True
        return self._pieces


class BufferedAudio:
    """A small file that arrived whole with its request, kept as the bytes it is."""

    def __init__(self, data: bytes, *, filename: str, content_type: str) -> None:
        self._data = data
        self.filename = filename
        self.content_type = content_type
        self.size: int | None = len(data)

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        """Always empty: the whole form is read before the upload is sent."""
        return ()

    @property
    def replayable(self) -> bool:
        """Always: the bytes are at hand."""
        return True

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes in one piece."""
        yield self._data

    def open_reader(self) -> IO[bytes]:
        """A file object over the bytes, for a library that wants one."""
        return io.BytesIO(self._data)

    def close(self) -> None:
        """Nothing to release."""


class SpooledAudio:
    """A whole file copied to a :class:`Spool`, replayable from the start."""

    def __init__(self, spool: Spool, *, filename: str, content_type: str) -> None:
        self._spool = spool
        self.filename = filename
        self.content_type = content_type

    @property
    def size(self) -> int | None:
        """The file's size: known once it is spooled."""
        return self._spool.size

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        """Always empty: a spooled file is sent last, after every field."""
        return ()

    @property
    def replayable(self) -> bool:
        """Always: the whole file is on the spool."""
        return True

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the spooled file."""
        await self._spool.append(chunk)

    def chunks(self) -> AsyncIterator[bytes]:
        """The spooled bytes from the start."""
        return self._spool.chunks()

    def open_reader(self) -> IO[bytes]:
        """A file object over the spooled file, for a library that wants one."""
        return self._spool.open_reader()

    def close(self) -> None:
        """Release the spool."""
        self._spool.close()


_END = object()


class ReplayableAudio:
    """A live upload recorded to a spool as it streams, so that later attempts can replay it.

    One task, the pump, reads the client: it appends each piece to the spool,
    then hands it to the attempt that is sending, through a one-piece
    mailbox (so memory stays flat). An attempt that fails, even mid-piece,
    loses nothing: the next one replays the spool, then takes up the
    mailbox where the replay ends. Past ``max_spool_bytes`` the recording
    stops; the upload goes on streaming but cannot be replayed.
    """

    def __init__(self, live: AudioSource, spool: Spool, max_spool_bytes: int) -> None:
        self._live = live
        self._spool = spool
        self._max_spool_bytes = max_spool_bytes
        self.filename = live.filename
        self.content_type = live.content_type
        self.size: int | None = None
        self._overflowed = False
        self._attempts = 0
        self._slot: tuple[int, bytes] | object | None = None
        self._failure: BaseException | None = None
        self._writing: asyncio.Future[None] | None = None
        self._changed = asyncio.Condition()
        self._pump = asyncio.create_task(self._read_client())

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        """The fields the client sent after the file, once it is all read."""
        return self._live.trailing_fields

    @property
    def replayable(self) -> bool:
        """Whether what was read so far is all on the spool."""
        return not self._overflowed

    async def _read_client(self) -> None:
        offset = 0
        try:
            async for chunk in self._live.chunks():
                # One spool write at a time, in order, each overlapping the
                # upstream's send of its piece: the disk is often the slowest
                # of the three.
                await self._write_finished()
                if not self._overflowed:
                    if self._spool.size + len(chunk) > self._max_spool_bytes:
                        self._overflowed = True
                        log.info("upload past the spool cap: it can no longer be replayed")
                    else:
                        self._writing = asyncio.ensure_future(self._spool.append(chunk))
                await self._put((offset, chunk))
                offset += len(chunk)
            await self._write_finished()
            await self._put(_END)
        except Exception as exc:  # handed to the attempt waiting for the next piece
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

    async def chunks(self) -> AsyncIterator[bytes]:
        """The upload from its first byte: replayed from the spool, then live."""
        attempt = self._attempts
        self._attempts += 1
        position = 0
        if attempt > 0:
            if self._overflowed:
                raise NotReplayableError(
                    f"the upload is larger than the spool limit of {self._max_spool_bytes} "
                    "bytes, so it could not be sent again for a retry or fallback"
                )
            # A piece the failed attempt took may still be on its way to disk.
            await self._write_finished()
            async for piece in self._spool.chunks(self._spool.size):
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
            offset, chunk = item
            if offset + len(chunk) <= position:
                continue  # replayed from the spool already
            yield chunk[position - offset :] if offset < position else chunk
            position = offset + len(chunk)

    async def aclose(self) -> None:
        """Stop reading the client and release the spool."""
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        if self._writing is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._writing
        self._spool.close()
