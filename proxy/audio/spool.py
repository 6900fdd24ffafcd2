"""The spool: unnamed temporary files that hold uploads and chunks on disk, never in memory."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import IO, Any, Self, TypeVar

from prometheus_client import Counter

from ..errors import ServiceUnavailableError

log = logging.getLogger(__name__)

#: Pieces the spool is read back in.
_READ_BYTES = 256 * 1024


_T = TypeVar("_T")


class Spool:
    """An unnamed temporary file, appended to and read at offsets off the event loop.

    File I/O runs in worker threads: a large upload can hit the kernel's
    dirty-page throttling, which would otherwise stall the event loop.
    Positional reads and writes let a replay read while the recording grows.
    """

    def __init__(self, file: IO[bytes], written: Counter | None = None) -> None:
        self._file = file
        self._written = written
        self._fd = file.fileno()
        #: Bytes written so far; grows only once a write has completed.
        self.size = 0
        self._in_flight = 0
        self._closing = False

    @classmethod
    async def create(cls, directory: str | None, written: Counter | None = None) -> Self:
        """Open a spool in ``directory`` (the system's temporary directory if None).

        ``written`` counts the bytes written to it.
        """
        try:
            file = await asyncio.to_thread(open_unnamed, directory)
        except OSError as exc:
            raise _spool_unavailable(exc) from exc
        return cls(file, written)

    @classmethod
    def adopt(cls, file: IO[bytes], written: Counter | None = None) -> Self:
        """A spool over ``file``, already written by someone else (its bytes are counted now)."""
        spool = cls(file, written)
        spool.size = os.fstat(spool._fd).st_size
        if written is not None:
            written.inc(spool.size)
        return spool

    async def append(self, data: bytes) -> None:
        """Add ``data`` at the end."""
        await self._run(_write_all, self._fd, data, self.size)
        self.size += len(data)
        if self._written is not None:
            self._written.inc(len(data))

    async def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``."""
        return await self._run(os.pread, self._fd, size, offset)

    async def pieces(self, end: int | None = None) -> AsyncIterator[bytes]:
        """The spooled bytes from the start up to ``end`` (all of them if None)."""
        end = self.size if end is None else end
        offset = 0
        while offset < end:
            piece = await self.read(offset, min(_READ_BYTES, end - offset))
            if not piece:
                raise ServiceUnavailableError("the spooled upload is shorter than recorded")
            offset += len(piece)
            yield piece

    def open_reader(self) -> IO[bytes]:
        """A file object reading the spool from the start, for a library that wants one.

        It has its own descriptor, so it stays readable after :meth:`close`
        until it is closed itself.
        """
        return open(os.dup(self._fd), "rb")

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        if self._closing:
            raise ServiceUnavailableError("the spool is closed")
        # A cancelled caller cannot stop a thread mid-call, so the file stays
        # open until every thread using it is done: closing it under one
        # could hand its descriptor number to a socket the thread then writes.
        work = asyncio.ensure_future(asyncio.to_thread(function, *args))
        self._in_flight += 1
        work.add_done_callback(self._finished)
        try:
            return await asyncio.shield(work)
        except OSError as exc:
            raise _spool_unavailable(exc) from exc

    def _finished(self, work: asyncio.Future[Any]) -> None:
        self._in_flight -= 1
        if not work.cancelled():
            work.exception()  # retrieved here when its caller has gone
        if self._closing and not self._in_flight:
            self._file.close()

    def close(self) -> None:
        """Release the spool; its disk space goes with it."""
        if self._closing:
            return
        self._closing = True
        if not self._in_flight:
            self._file.close()


def open_unnamed(directory: str | None) -> IO[bytes]:
    """A temporary file with no name, in ``directory`` (the system's if None).

    Unnamed from the start (O_TMPFILE where the filesystem has it): nothing
    is left on disk even if the process is killed.
    """
    return tempfile.TemporaryFile(mode="w+b", buffering=0, dir=directory, prefix="proxy-spool-")


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _spool_unavailable(exc: OSError) -> ServiceUnavailableError:
    log.error("cannot spool an upload: %s", exc)
    return ServiceUnavailableError(
        "the upload cannot be stored for forwarding right now; "
        "send model before file to stream it instead",
        code="spool_unavailable",
    )
