"""The uploaded file in the three forms it can take: in memory, on the spool, or arriving.

A small body that arrived whole leaves its file in memory
(:class:`BufferedAudio`); a file sent before the fields that route it is
spooled to disk (:class:`SpooledAudio`); any other is read straight off the
client socket as it is sent upstream (:class:`LiveAudio`). Each is an
:class:`~proxy.models.AudioSource`: what providers read.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import IO

from ..errors import UploadOverLimitError
from ..models import FormField
from .recording import Recording
from .spool import Spool


class _WholeFile:
    """A file all at hand: sent after every field, and readable again from its start."""

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        """Always empty: the whole form is read before the upload is sent."""
        return ()

    @property
    def replayable(self) -> bool:
        """Always: the whole file is kept."""
        return True


class BufferedAudio(_WholeFile):
    """A small file that arrived whole with its request, kept as the bytes it is."""

    def __init__(self, data: bytes, *, filename: str, content_type: str) -> None:
        self._data = data
        self.filename = filename
        self.content_type = content_type
        self.size: int | None = len(data)

    async def pieces(self) -> AsyncIterator[bytes]:
        """The file's bytes in one piece."""
        yield self._data

    def whole_file(self) -> IO[bytes]:
        """A file object over the bytes, for a library that wants one."""
        return io.BytesIO(self._data)

    async def aclose(self) -> None:
        """Nothing to release."""


class SpooledAudio(_WholeFile):
    """A whole file copied to a :class:`Spool`, replayable from the start."""

    def __init__(self, spool: Spool, *, filename: str, content_type: str) -> None:
        self._spool = spool
        self.filename = filename
        self.content_type = content_type

    @property
    def size(self) -> int | None:
        """The file's size: known once it is spooled."""
        return self._spool.size

    async def write(self, piece: bytes) -> None:
        """Append ``piece`` to the spooled file."""
        await self._spool.append(piece)

    def pieces(self) -> AsyncIterator[bytes]:
        """The spooled bytes from the start."""
        return self._spool.pieces()

    def whole_file(self) -> IO[bytes]:
        """A file object over the spooled file, for a library that wants one."""
        return self._spool.open_reader()

    async def aclose(self) -> None:
        """Release the spool."""
        self._spool.close()


@dataclass(frozen=True)
class Guard:
    """A check a live upload's passes make each time they read past ``mark`` bytes."""

    mark: int
    passed: Callable[[int], Awaitable[int]]


async def _after(
    head: list[bytes], rest: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """``head``'s pieces, then ``rest``'s (closed with this generator)."""
    async with aclosing(rest):
        while head:
            yield head.pop(0)
        async for piece in rest:
            yield piece


class LiveAudio:
    """The file as it arrives from the client, passed on as it is read.

    ``pieces`` yields the file's bytes straight off the client socket (and
    then reads the rest of the form); ``trailing_fields`` is where the form
    reader puts the fields the client sent after the file, once ``pieces``
    is done. Read once,
    nothing of it is kept. For a request that may need it again (a retry, a
    fallback, an upload cut into chunks once it proves too long) it is
    :meth:`record`-ed; :meth:`limit` makes a pass fail past a size,
    :meth:`guard` makes a pass wait for a check each time it has read past a
    mark (governance's, which may fail it), and :meth:`hold_end` makes the
    end of each pass wait for a check (the transcript cache's), which may
    fail it. :meth:`peek` reads the first bytes before any pass, so that what
    the container declares is known before anything is sent.
    """

    def __init__(
        self,
        pieces: AsyncGenerator[bytes, None],
        *,
        filename: str,
        content_type: str,
        trailing_fields: Sequence[FormField],
    ) -> None:
        self._client = pieces
        self._trailing_fields = trailing_fields
        self._recording: Recording | None = None
        self._passes = 0
        self._limit: int | None = None
        self._before_end: Callable[[], Awaitable[None]] | None = None
        self._guard: Guard | None = None
        self.filename = filename
        self.content_type = content_type

    @property
    def size(self) -> int | None:
        """Known once a recorded pass has reached the end of the file."""
        return self._recording.size if self._recording is not None else None

    @property
    def trailing_fields(self) -> Sequence[FormField]:
        """The fields sent after the file; complete once a pass has read it whole."""
        return self._trailing_fields

    @property
    def replayable(self) -> bool:
        """Whether what was read so far is all recorded, so a pass can start over."""
        return self._recording is not None and self._recording.replayable

    def record(self, spool: Spool, max_bytes: int) -> None:
        """Record the upload to ``spool`` as it is read, up to ``max_bytes``."""
        if self._passes:
            raise RuntimeError("a live upload must be recorded before it is read")
        self._recording = Recording(self._client, spool, max_bytes)

    async def peek(self, size: int) -> None:
        """Read the file's first ``size`` bytes (all of it, if shorter) now; the first pass
        hands them out before it reads on. Only before a pass or a recording."""
        if self._passes or self._recording is not None:
            raise RuntimeError("a live upload is peeked at before it is read")
        head: list[bytes] = []
        got = 0
        while got < size:
            piece = await anext(self._client, None)
            if piece is None:
                break
            head.append(piece)
            got += len(piece)
        if head:
            self._client = _after(head, self._client)

    def guard(self, mark: int, passed: Callable[[int], Awaitable[int]]) -> None:
        """Each pass, once it has read past ``mark`` bytes, awaits ``passed(bytes read)``
        before handing on the piece that crossed it; ``passed`` returns the next mark, or
        raises to fail the pass."""
        self._guard = Guard(mark, passed)

    def limit(self, max_bytes: int | None) -> None:
        """Fail later passes with :class:`UploadOverLimitError` past ``max_bytes`` (None: not)."""
        self._limit = max_bytes

    def hold_end(self, check: Callable[[], Awaitable[None]] | None) -> None:
        """Await ``check`` before each later pass ends; it may raise to fail the pass."""
        self._before_end = check

    def pieces(self) -> AsyncIterator[bytes]:
        """The file from its first byte: live, or replayed and then live when recorded."""
        if self._recording is not None:
            pieces = self._recording.pieces()
        elif self._passes:
            raise RuntimeError("a live upload that is not recorded can be read only once")
        else:
            pieces = self._client
        self._passes += 1
        if self._limit is None and self._before_end is None and self._guard is None:
            return pieces  # nothing in between the client and the upstream
        return self._checked(pieces, self._limit, self._before_end, self._guard)

    async def _checked(
        self,
        pieces: AsyncIterator[bytes],
        limit: int | None,
        before_end: Callable[[], Awaitable[None]] | None,
        guard: Guard | None,
    ) -> AsyncIterator[bytes]:
        sent = 0
        mark = guard.mark if guard is not None else None
        async for piece in pieces:
            sent += len(piece)
            if limit is not None and sent > limit:
                raise UploadOverLimitError(f"the upload is larger than {limit} bytes")
            if mark is not None and sent > mark:
                assert guard is not None
                mark = await guard.passed(sent)
            yield piece
        if before_end is not None:
            await before_end()

    def whole_file(self) -> None:
        """Never at hand: it is still arriving."""
        return

    async def aclose(self) -> None:
        """Stop reading the client and release the recording, if any."""
        if self._recording is not None:
            await self._recording.aclose()
        # Closed now rather than by the garbage collector; one still being
        # read by a send that is being cancelled ends with that send.
        with contextlib.suppress(RuntimeError):
            await self._client.aclose()
        self._before_end = None  # a check holds the request's form: no cycle through it
