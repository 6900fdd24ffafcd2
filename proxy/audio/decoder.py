"""Audio decoded as it arrives: PyAV in a thread of its own, 16 kHz mono 16-bit PCM out.

Long audio cuts the PCM into chunks, the local model into windows, realtime
into turns; all of them get it the same way. :class:`StreamingDecoder` takes
an upload (as it arrives, or whole) and runs a ``consume`` function in a
thread over the PCM, piece by piece, while the event loop hands the
client's bytes to the thread through a :class:`Pipe`, a few pieces at a
time: a decoder slower than the client slows the client down rather than
filling memory. A whole file (spooled, or in memory) is decoded where it
is; an MP4, whose index a stream cannot reach, is spooled first.

PyAV is imported only in the thread, and only when audio is decoded: it
comes with the ``long-audio`` extra (the ``local`` extra has it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import IO, Any, TypeVar

from prometheus_client import Counter

from ..models import AudioSource
from .spool import Spool

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
SAMPLE_BYTES = 2
#: Bytes per second of 16 kHz mono 16-bit PCM.
PCM_BYTES_PER_S = SAMPLE_RATE * SAMPLE_BYTES
#: MP4 and its kin keep their index where a stream cannot reach without seeking.
_SEEK_ONLY_BRANDS = (b"ftyp",)
#: Longest wait for the decoding thread to notice a stop.
_THREAD_STOP_S = 10.0

_T = TypeVar("_T")


def decoder_installed() -> bool:
    """Whether PyAV (the ``long-audio`` extra) can be imported.

    Imported, not just looked for: asked only when audio is to be decoded.
    """
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class UndecodableAudioError(Exception):
    """The upload is not audio PyAV can decode."""


class DecodingStopped(Exception):
    """The request ended; the thread stops where it is."""


def decode_pcm(source: Any) -> Generator[bytes, None, None]:
    """The recording in ``source`` (a file object) as PCM pieces (thread side).

    A damaged tail ends the recording rather than failing it, as FFmpeg-based
    servers do with such a file; a file with no audio in it is
    :class:`UndecodableAudioError`.
    """
    import av

    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise UndecodableAudioError(str(exc)) from exc
    decoded_any = False
    try:
        streams = container.streams.audio
        if not streams:
            raise UndecodableAudioError("the file has no audio stream")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        try:
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    decoded_any = True
                    yield pcm_of(out)
        except (av.error.FFmpegError, ValueError, IndexError) as exc:
            if not decoded_any:
                raise UndecodableAudioError(str(exc)) from exc
            log.warning("decoding stopped early: %s", exc)
        for out in resampler.resample(None):
            yield pcm_of(out)
    finally:
        container.close()


def _consumed(consume: Callable[[Iterator[bytes]], _T], source: Any) -> _T:
    """``consume`` over ``source``'s PCM; the demuxer and decoder closed however it ends."""
    with contextlib.closing(decode_pcm(source)) as pcm:
        return consume(pcm)


def pcm_of(frame: Any) -> bytes:
    """A PyAV frame's samples as bytes (its buffer may be padded past them)."""
    return bytes(memoryview(frame.planes[0])[: frame.samples * SAMPLE_BYTES])


class Pipe:
    """Bytes handed from the event loop to the decoding thread, a few pieces at a time.

    The loop hands pieces over with :meth:`put` as it reads them from the
    client, and waits when ``depth`` pieces are waiting, so a slow decoder
    slows the client down instead of filling memory. The thread reads it as
    a file.
    """

    def __init__(self, depth: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Semaphore(depth)
        self._pieces: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self._current = memoryview(b"")
        self._ended = False
        self._discarding = False

    async def put(self, piece: bytes) -> None:
        """Hand ``piece`` to the thread (loop side); dropped once the thread has stopped reading."""
        if self._discarding:
            return
        await self._room.acquire()
        if not self._discarding:
            self._pieces.put(piece)

    def discard(self) -> None:
        """The thread reads no more: what is put from now on is dropped (loop side)."""
        self._discarding = True
        self._room.release()  # a put waiting for room goes on, and drops its piece

    def end(self) -> None:
        """No more bytes: the thread reads end of file (loop side)."""
        self._pieces.put(None)

    def abort(self) -> None:
        """Make the thread's next read fail, so it stops (loop side)."""
        self._pieces.put(DecodingStopped())

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, blocking until some arrive; ``b""`` at the end (thread side)."""
        while not self._current and not self._ended:
            item = self._pieces.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self._ended = True
                break
            self._current = memoryview(item)
            self._loop.call_soon_threadsafe(self._room.release)
        if size < 0 or size >= len(self._current):
            out, self._current = self._current, memoryview(b"")
        else:
            out, self._current = self._current[:size], self._current[size:]
        return bytes(out)


class StreamingDecoder:
    """One upload decoded in a thread of its own, as it arrives (loop side).

    ``slots`` bounds the decoders running at once in the process (each takes
    a core while it decodes); more wait their turn, their clients held back
    by backpressure. ``upload_read`` is called once the whole upload has
    been read (a check that may refuse it).
    """

    def __init__(
        self,
        audio: AudioSource,
        *,
        slots: asyncio.Semaphore,
        spool_dir: str | None = None,
        spooled: Counter | None = None,
        upload_read: Callable[[], None] | None = None,
    ) -> None:
        self._audio = audio
        self._slots = slots
        self._spool_dir = spool_dir
        self._spooled = spooled
        self._upload_read = upload_read or (lambda: None)
        self._pipe: Pipe | None = None
        self._thread_done = asyncio.Event()
        #: Bytes of the upload taken in so far (all of it, once :meth:`run` returns).
        self.bytes_in = 0

    async def run(self, consume: Callable[[Iterator[bytes]], _T]) -> _T:
        """``consume(pcm)`` in the decoding thread, over the upload's PCM; its result.

        Raises :class:`UndecodableAudioError` for what is not audio, and
        whatever the client's side of the upload raises (gone, too slow).
        """
        source: IO[bytes] | Pipe | None = None
        spool: Spool | None = None
        feeder: asyncio.Task[None] | None = None
        decoded: asyncio.Future[_T] | None = None
        try:
            source = self._audio.whole_file()
            if source is not None:
                self.bytes_in = self._audio.size or 0
            else:
                pieces = aiter(self._audio.pieces())
                first = await anext(pieces, b"")
                if first[4:8] in _SEEK_ONLY_BRANDS:
                    # An MP4 is decodable only with its index, often at its end:
                    # the whole file goes to the spool and is decoded from there.
                    spool = await Spool.create(self._spool_dir, written=self._spooled)
                    await spool.append(first)
                    async for piece in pieces:
                        await spool.append(piece)
                    self.bytes_in = spool.size
                    self._upload_read()
                    source = spool.open_reader()
                else:
                    source = self._pipe = Pipe()
                    feeder = asyncio.ensure_future(self._feed(self._pipe, first, pieces))
            await self._slots.acquire()  # released once the thread is done
            opened = source
            decoded = self._in_thread(lambda: _consumed(consume, opened))
            if feeder is not None:
                await asyncio.wait((feeder, decoded), return_when=asyncio.FIRST_COMPLETED)
                if decoded.done() and not feeder.done():
                    decoded.result()  # a decoding failure ends the request here
                    # The recording ended before the body did (its header said
                    # so): the rest is read, for the form's end, not decoded.
                    assert self._pipe is not None
                    self._pipe.discard()
                await feeder  # the client's failures (gone, too slow) end it too
            return await decoded
        finally:
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(BaseException):
                    await feeder
            self.stop()
            if decoded is not None:
                # The thread may still be reading the source or using its files.
                await self._after_thread()
                if decoded.done() and not decoded.cancelled():
                    decoded.exception()  # a stopped thread's end is nobody's news
                self._slots.release()
            if source is not None and not isinstance(source, Pipe):
                source.close()
            if spool is not None:
                spool.close()

    def stop(self) -> None:
        """Make the thread's next read of the upload fail with :class:`DecodingStopped`."""
        if self._pipe is not None:
            self._pipe.abort()

    async def _feed(self, pipe: Pipe, first: bytes, rest: AsyncIterator[bytes]) -> None:
        """Pass the client's bytes to the decoding thread as they arrive."""
        if first:
            self.bytes_in += len(first)
            await pipe.put(first)
        async for piece in rest:
            self.bytes_in += len(piece)
            await pipe.put(piece)
        self._upload_read()
        pipe.end()

    def _in_thread(self, function: Callable[[], _T]) -> asyncio.Future[_T]:
        """``function()`` in a thread of its own (a decode can run for minutes)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def settle(result: Any, failure: BaseException | None) -> None:
            self._thread_done.set()
            if future.done():
                return
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(result)

        def run() -> None:
            try:
                result, failure = function(), None
            except BaseException as exc:
                result, failure = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(settle, result, failure)

        threading.Thread(target=run, name="audio-decoder", daemon=True).start()
        return future

    async def _after_thread(self) -> None:
        """Wait (a bounded time) for the decoding thread to stop using its files."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(_THREAD_STOP_S):
                await asyncio.shield(self._thread_done.wait())
