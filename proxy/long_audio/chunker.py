"""Long audio cut into chunks a provider accepts: decoded as it arrives, cut at silence.

This runs in a worker thread. PyAV decodes whatever container the client
sent, read as a stream (the bytes come from the client socket through a
:class:`Pipe`), and resamples it to 16 kHz mono. Each chunk is encoded as it
goes into an unnamed spool file (WebM/Opus by default: compact, fast to
encode, and accepted by every provider); only the last ``cut_search_s`` seconds of PCM are held in
memory, the stretch in which the chunk's end is chosen: the quietest 100 ms
in it, so a cut falls between words whenever there is any silence to cut at.

PyAV is imported only here, and only when long audio is cut: it comes with
the ``long-audio`` extra (the ``local`` extra has it too). NumPy is not
used: its import alone would cost a long upload 11 MiB of RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import queue
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
_SAMPLE_BYTES = 2
#: Bytes per second of 16 kHz mono 16-bit PCM: no chunk's file is larger than this.
PCM_BYTES_PER_S = SAMPLE_RATE * _SAMPLE_BYTES
#: The cut lands in the middle of the quietest window this long.
_QUIET_WINDOW_S = 0.1
_FRAME_SAMPLES = SAMPLE_RATE // 100  # 10 ms energy frames


@dataclass(frozen=True)
class ChunkFormat:
    """How chunks are encoded: PyAV's container and codec, and what the upstream is told."""

    container: str
    codec: str
    extension: str
    content_type: str
    bit_rate: int | None = None
    options: tuple[tuple[str, str], ...] = ()


#: ``proxy.chunking.format``. Measured on 16 kHz mono speech-like audio, per
#: second of audio and as encoding speed on one core:
#: webm (Opus, 32 kbit/s): 4 KB, about 800x real time, 3 MiB of RSS to encode;
#: mp3 (64 kbit/s): 8 KB, about 400x, 4 MiB; flac: lossless, about half of
#: PCM's 32 KB, 5000x, but 9.5 MiB; wav: PCM itself. webm, mp3 and wav are
#: in every provider's list of accepted formats (Azure's has no flac).
CHUNK_FORMATS: dict[str, ChunkFormat] = {
    "webm": ChunkFormat(
        "webm", "libopus", "webm", "audio/webm", 32_000, (("compression_level", "3"),)
    ),
    "mp3": ChunkFormat("mp3", "libmp3lame", "mp3", "audio/mpeg", 64_000),
    "flac": ChunkFormat("flac", "flac", "flac", "audio/flac"),
    "wav": ChunkFormat("wav", "pcm_s16le", "wav", "audio/wav"),
}


def long_audio_installed() -> bool:
    """Whether PyAV (the ``long-audio`` extra) can be imported.

    Imported, not just looked for: asked only when a long upload arrives.
    """
    try:
        import av  # noqa: F401
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
    #: The encoded chunk, an unnamed temporary file; owned by the receiver.
    file: IO[bytes]


class Pipe:
    """Bytes handed from the event loop to the decoding thread, a few pieces at a time.

    The loop hands pieces over with :meth:`put` as it reads them from the client, and waits
    when ``depth`` pieces are waiting, so a slow decoder slows the client
    down instead of filling memory. The thread reads it as a file.
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
    """Decodes a recording and cuts it into encoded chunks (runs in a worker thread).

    ``open_file`` makes the unnamed file a chunk is written to; ``emit``
    hands a finished chunk over; ``wait_for_room`` blocks until another
    chunk may be made (so the chunks on disk stay bounded), raising
    :class:`ChunkerStopped` if the request has ended. PCM is handled as
    16-bit little-endian bytes throughout.
    """

    def __init__(
        self,
        *,
        max_chunk_s: float,
        cut_search_s: float,
        chunk_format: ChunkFormat,
        open_file: Callable[[], IO[bytes]],
        emit: Callable[[CutChunk], None],
        wait_for_room: Callable[[], None],
    ) -> None:
        # In bytes, always a whole number of samples.
        max_samples = int(max_chunk_s * SAMPLE_RATE)
        search_samples = max(
            2 * int(_QUIET_WINDOW_S * SAMPLE_RATE),
            min(int(cut_search_s * SAMPLE_RATE), max_samples // 2),
        )
        self._max = max_samples * _SAMPLE_BYTES
        self._search = search_samples * _SAMPLE_BYTES
        self._format = chunk_format
        self._open_file = open_file
        self._emit = emit
        self._wait_for_room = wait_for_room
        self._index = 0
        self._chunk_start = 0  # bytes of PCM before this chunk
        self._encoded = 0  # bytes of this chunk already encoded
        # Decoded, not yet encoded: at most the stretch a cut may fall in,
        # kept as the pieces the decoder gave (joined only to cut).
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0
        self._writer: _ChunkWriter | None = None

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
                        self._feed(_pcm_of(out))
            except (av.error.FFmpegError, ValueError, IndexError) as exc:
                if not self._decoded_any():
                    raise UndecodableAudioError(str(exc)) from exc
                # A damaged tail: what came before it is transcribed, as
                # FFmpeg-based servers do with such a file.
                log.warning("long audio: decoding stopped early: %s", exc)
            for out in resampler.resample(None):
                self._feed(_pcm_of(out))
        except BaseException:
            if self._writer is not None:  # a chunk half made is nobody's: its file goes
                self._writer.abandon()
                self._writer = None
            raise
        finally:
            container.close()
        total = self._chunk_start + self._encoded + self._tail_bytes
        if total == 0:
            raise UndecodableAudioError("the file holds no audio")
        tail = self._joined_tail()
        self._finish_chunk(tail, len(tail))
        return total / PCM_BYTES_PER_S

    def _decoded_any(self) -> bool:
        return bool(self._chunk_start or self._encoded or self._tail_bytes)

    def _feed(self, pcm: bytes) -> None:
        self._tail.append(pcm)
        self._tail_bytes += len(pcm)
        while self._encoded + self._tail_bytes >= self._max:
            # The chunk is full: end it at the quietest point of its last stretch.
            tail = self._joined_tail()
            window_end = self._max - self._encoded
            window_start = max(0, window_end - self._search)
            cut = window_start + _quietest(tail[window_start:window_end])
            self._finish_chunk(tail, cut)
        # What lies before the stretch a cut may fall in can be encoded now.
        while self._tail and self._tail_bytes - len(self._tail[0]) >= self._search:
            piece = self._tail.popleft()
            self._tail_bytes -= len(piece)
            self._encode(piece)

    def _joined_tail(self) -> bytes:
        tail = b"".join(self._tail)
        self._tail = deque([tail])
        return tail

    def _encode(self, pcm: bytes) -> None:
        if not pcm:
            return
        if self._writer is None:
            self._wait_for_room()
            self._writer = _ChunkWriter(self._open_file(), self._format)
        self._writer.write(pcm)
        self._encoded += len(pcm)

    def _finish_chunk(self, tail: bytes, cut: int) -> None:
        """End the chunk after ``tail[:cut]``; the rest of ``tail`` starts the next one."""
        self._encode(tail[:cut])
        rest = tail[cut:]
        self._tail = deque([rest]) if rest else deque()
        self._tail_bytes = len(rest)
        if self._writer is None:
            return  # nothing was in it
        file = self._writer.close()
        start = self._chunk_start
        self._chunk_start += self._encoded
        self._emit(
            CutChunk(
                self._index, start / PCM_BYTES_PER_S, self._chunk_start / PCM_BYTES_PER_S, file
            )
        )
        self._index += 1
        self._encoded = 0
        self._writer = None


def _pcm_of(frame: Any) -> bytes:
    """A resampled frame's samples as bytes (its buffer may be padded past them)."""
    return bytes(memoryview(frame.planes[0])[: frame.samples * _SAMPLE_BYTES])


def _quietest(pcm: bytes) -> int:
    """Where in ``pcm`` the quietest 100 ms is centred (the latest of equals), in bytes."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) // _SAMPLE_BYTES * _SAMPLE_BYTES])
    frames = len(samples) // _FRAME_SAMPLES
    window = max(1, int(_QUIET_WINDOW_S * SAMPLE_RATE) // _FRAME_SAMPLES)
    if frames <= window:
        return len(pcm)
    energy = []
    for start in range(0, frames * _FRAME_SAMPLES, _FRAME_SAMPLES):
        frame = samples[start : start + _FRAME_SAMPLES]
        energy.append(sum(map(operator.mul, frame, frame)))
    # A running sum over the window; the latest quiet window, so chunks come
    # out as long as allowed.
    total = sum(energy[:window])
    best, best_at = total, 0
    for first in range(1, frames - window + 1):
        total += energy[first + window - 1] - energy[first - 1]
        if total <= best:
            best, best_at = total, first
    return (best_at + window // 2) * _FRAME_SAMPLES * _SAMPLE_BYTES


class _ChunkWriter:
    """16 kHz mono PCM encoded into ``file`` as it is written."""

    def __init__(self, file: IO[bytes], chunk_format: ChunkFormat) -> None:
        import av

        self._av: Any = av
        self._file = file
        container: Any = av.open(file, mode="w", format=chunk_format.container)
        stream: Any = container.add_stream(
            chunk_format.codec,
            rate=SAMPLE_RATE,
            layout="mono",
            options=dict(chunk_format.options),
        )
        if chunk_format.bit_rate is not None:
            stream.bit_rate = chunk_format.bit_rate
        self._container = container
        self._stream = stream

    def write(self, pcm: bytes) -> None:
        frame = self._av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // _SAMPLE_BYTES)
        frame.planes[0].update(pcm)
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
