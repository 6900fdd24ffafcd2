"""Long audio cut into chunks a provider accepts: decoded as it arrives, cut at silence.

This runs in a worker thread. PyAV decodes whatever container the client
sent, read as a stream (the bytes come from the client socket through a
:class:`Pipe`), and resamples it to 16 kHz mono. Each chunk is encoded to
FLAC (lossless, about half the size of PCM, accepted by every provider) in
an unnamed spool file as it goes; only the last ``cut_search_s`` seconds of
PCM are held in memory, the stretch in which the chunk's end is chosen: the
quietest 100 ms in it, so a cut falls between words whenever there is any
silence to cut at.

PyAV and NumPy are imported only here, and only when long audio is cut:
they come with the ``long-audio`` extra (the ``local`` extra has them too).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

SAMPLE_RATE = 16_000
#: Bytes per second of 16 kHz mono 16-bit PCM: a chunk's FLAC is at most this.
PCM_BYTES_PER_S = SAMPLE_RATE * 2
#: The cut lands in the middle of the quietest window this long.
_QUIET_WINDOW_S = 0.1
_FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms energy frames


def long_audio_installed() -> bool:
    """Whether PyAV and NumPy (the ``long-audio`` extra) can be imported.

    Imported, not just looked for: asked only when a long upload arrives.
    """
    try:
        import av  # noqa: F401
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


class UndecodableAudioError(Exception):
    """The upload is not audio PyAV can decode."""


class ChunkerStopped(Exception):
    """The request ended; the thread stops where it is."""


@dataclass(frozen=True)
class CutChunk:
    """One chunk, encoded: where it lies in the whole recording and the file it is in."""

    index: int
    start_s: float
    end_s: float
    #: FLAC, an unnamed temporary file positioned anywhere; owned by the receiver.
    file: IO[bytes]


class Pipe:
    """Bytes handed from the event loop to the decoding thread, a few pieces at a time.

    The loop :meth:`put`\\ s pieces as it reads them from the client and waits
    when ``depth`` pieces are waiting, so a slow decoder slows the client
    down instead of filling memory. The thread reads it as a file.
    """

    def __init__(self, depth: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Semaphore(depth)
        self._pieces: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self._current = memoryview(b"")
        self._ended = False

    async def put(self, piece: bytes) -> None:
        """Hand ``piece`` to the thread (loop side)."""
        await self._room.acquire()
        self._pieces.put(piece)

    def end(self) -> None:
        """No more bytes: the thread reads end of file (loop side)."""
        self._pieces.put(None)

    def abort(self) -> None:
        """Make the thread's next read fail, so it stops (loop side)."""
        self._pieces.put(ChunkerStopped())

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


class Chunker:
    """Decodes a recording and cuts it into FLAC chunks (runs in a worker thread).

    ``open_file`` makes the unnamed file a chunk is written to; ``emit``
    hands a finished chunk over; ``wait_for_room`` blocks until another
    chunk may be made (so the chunks on disk stay bounded), raising
    :class:`ChunkerStopped` if the request has ended.
    """

    def __init__(
        self,
        *,
        max_chunk_s: float,
        cut_search_s: float,
        open_file: Callable[[], IO[bytes]],
        emit: Callable[[CutChunk], None],
        wait_for_room: Callable[[], None],
    ) -> None:
        import numpy

        self._np: Any = numpy
        self._max_samples = int(max_chunk_s * SAMPLE_RATE)
        self._search_samples = max(
            int(_QUIET_WINDOW_S * SAMPLE_RATE) * 2,
            min(int(cut_search_s * SAMPLE_RATE), self._max_samples // 2),
        )
        self._open_file = open_file
        self._emit = emit
        self._wait_for_room = wait_for_room
        self._index = 0
        self._chunk_start = 0  # in samples of the whole recording
        self._encoded = 0  # samples of this chunk already encoded
        # Decoded, not yet encoded: at most the stretch a cut may fall in,
        # kept as the pieces the decoder gave (joined only to cut).
        self._tail: deque[Any] = deque()
        self._tail_samples = 0
        self._writer: _FlacWriter | None = None

    def run(self, source: Any) -> float:
        """Decode ``source`` (a file object) to the end; returns the recording's length in s."""
        import av

        try:
            container = av.open(source, mode="r")
        except (av.error.FFmpegError, ValueError, IndexError) as exc:
            raise UndecodableAudioError(str(exc)) from exc
        try:
            streams = container.streams.audio
            if not streams:
                raise UndecodableAudioError("the file has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            try:
                for frame in container.decode(streams[0]):
                    for out in resampler.resample(frame):
                        self._feed(out.to_ndarray().reshape(-1))
                for out in resampler.resample(None):
                    self._feed(out.to_ndarray().reshape(-1))
            except (av.error.FFmpegError, ValueError, IndexError) as exc:
                raise UndecodableAudioError(str(exc)) from exc
        except BaseException:
            if self._writer is not None:  # a chunk half made is nobody's: its file goes
                self._writer.abandon()
                self._writer = None
            raise
        finally:
            container.close()
        total = self._chunk_start + self._encoded + self._tail_samples
        if total == 0:
            raise UndecodableAudioError("the file holds no audio")
        tail = self._joined_tail()
        self._finish_chunk(tail, len(tail))
        return total / SAMPLE_RATE

    def _feed(self, samples: Any) -> None:
        self._tail.append(samples)
        self._tail_samples += len(samples)
        while self._encoded + self._tail_samples >= self._max_samples:
            # The chunk is full: end it at the quietest point of its last stretch.
            tail = self._joined_tail()
            window_end = self._max_samples - self._encoded
            window_start = max(0, window_end - self._search_samples)
            cut = window_start + self._quietest(tail[window_start:window_end])
            self._finish_chunk(tail, cut)
        # What lies before the stretch a cut may fall in can be encoded now.
        while self._tail and self._tail_samples - len(self._tail[0]) >= self._search_samples:
            piece = self._tail.popleft()
            self._tail_samples -= len(piece)
            self._encode(piece)

    def _joined_tail(self) -> Any:
        np = self._np
        tail = np.concatenate(self._tail) if self._tail else np.zeros(0, dtype=np.int16)
        self._tail = deque([tail])
        return tail

    def _quietest(self, samples: Any) -> int:
        """Where in ``samples`` the quietest 100 ms is centred (the latest of equals)."""
        np = self._np
        frames = len(samples) // _FRAME_SAMPLES
        window = max(1, int(_QUIET_WINDOW_S * SAMPLE_RATE) // _FRAME_SAMPLES)
        if frames <= window:
            return len(samples)
        squared = samples[: frames * _FRAME_SAMPLES].astype(np.float64) ** 2
        energy = squared.reshape(frames, _FRAME_SAMPLES).sum(axis=1)
        sums = np.convolve(energy, np.ones(window), mode="valid")
        # The latest quiet window, so chunks come out as long as allowed.
        latest = len(sums) - 1 - int(np.argmin(sums[::-1]))
        return (latest + window // 2) * _FRAME_SAMPLES

    def _encode(self, samples: Any) -> None:
        if not len(samples):
            return
        if self._writer is None:
            self._wait_for_room()
            self._writer = _FlacWriter(self._open_file())
        self._writer.write(samples)
        self._encoded += len(samples)

    def _finish_chunk(self, tail: Any, cut: int) -> None:
        """End the chunk after ``tail[:cut]``; the rest of ``tail`` starts the next one."""
        self._encode(tail[:cut])
        rest = tail[cut:]
        self._tail = deque([rest]) if len(rest) else deque()
        self._tail_samples = len(rest)
        if self._writer is None:
            return  # nothing was in it
        file = self._writer.close()
        start = self._chunk_start
        self._chunk_start += self._encoded
        self._emit(
            CutChunk(self._index, start / SAMPLE_RATE, self._chunk_start / SAMPLE_RATE, file)
        )
        self._index += 1
        self._encoded = 0
        self._writer = None


class _FlacWriter:
    """16 kHz mono PCM encoded to FLAC in ``file`` as it is written."""

    def __init__(self, file: IO[bytes]) -> None:
        import av

        self._av: Any = av
        self._file = file
        self._container: Any = av.open(file, mode="w", format="flac")
        self._stream: Any = self._container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")

    def write(self, samples: Any) -> None:
        frame = self._av.AudioFrame.from_ndarray(
            samples.reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def abandon(self) -> None:
        """Drop the chunk being written, and its file."""
        with contextlib.suppress(Exception):
            self._container.close()
        self._file.close()

    def close(self) -> IO[bytes]:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._file
