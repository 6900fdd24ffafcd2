"""Long audio cut into chunks a provider accepts (runs in the decoding thread).

The decoder (:mod:`proxy.audio.decoder`) gives the recording as PCM as it
arrives; :class:`~proxy.audio.silence.SilenceCutter` says where each chunk
ends (the quietest 100 ms shortly before ``max_chunk_s``, so a cut falls
between words whenever there is any silence to cut at); each chunk is
encoded as it goes into an unnamed spool file (WebM/Opus by default:
compact, fast to encode, and accepted by every provider). Only the stretch a
cut may fall in is held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

from ..audio.decoder import PCM_BYTES_PER_S, UndecodableAudioError
from ..audio.silence import CUT, Cut, SilenceCutter
from .encoding import ChunkFormat, ChunkWriter


@dataclass(frozen=True)
class CutChunk:
    """One chunk, encoded: where it lies in the whole recording and the file it is in."""

    index: int
    start_s: float
    end_s: float
    #: The encoded chunk, an unnamed temporary file; owned by the receiver.
    file: IO[bytes]


class Chunker:
    """Cuts a recording's PCM into encoded chunks.

    ``open_file`` makes the unnamed file a chunk is written to; ``emit``
    hands a finished chunk over; ``wait_for_room`` blocks until another
    chunk may be made (so the chunks on disk stay bounded), raising if the
    request has ended.
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
        self._cutter = SilenceCutter(max_chunk_s, cut_search_s)
        self._format = chunk_format
        self._open_file = open_file
        self._emit = emit
        self._wait_for_room = wait_for_room
        self._index = 0
        self._chunk_start = 0  # bytes of PCM before this chunk
        self._written = 0  # bytes of PCM in this chunk so far
        self._writer: ChunkWriter | None = None

    def run(self, pcm: Iterable[bytes]) -> float:
        """Cut all of ``pcm`` into chunks; returns the recording's length in seconds."""
        try:
            for piece in pcm:
                self._take(self._cutter.feed(piece))
            self._take(self._cutter.end())
        except BaseException:
            if self._writer is not None:  # a chunk half made is nobody's: its file goes
                self._writer.abandon()
                self._writer = None
            raise
        if self._chunk_start == 0:
            raise UndecodableAudioError("the file holds no audio")
        return self._chunk_start / PCM_BYTES_PER_S

    def _take(self, items: list[bytes | Cut]) -> None:
        for item in items:
            if item is CUT:
                self._finish_chunk()
                continue
            assert isinstance(item, bytes)
            if self._writer is None:
                self._wait_for_room()
                self._writer = ChunkWriter(self._open_file(), self._format)
            self._writer.write(item)
            self._written += len(item)

    def _finish_chunk(self) -> None:
        if self._writer is None:
            return  # nothing was in it
        file = self._writer.close()
        self._writer = None
        start = self._chunk_start
        self._chunk_start += self._written
        self._written = 0
        self._emit(
            CutChunk(
                self._index, start / PCM_BYTES_PER_S, self._chunk_start / PCM_BYTES_PER_S, file
            )
        )
        self._index += 1
