"""How chunks are encoded: the formats a chunk can be sent in, and the writer that makes one.

16 kHz mono PCM goes in as it is cut; the chunk's file comes out, encoded as
it goes, in an unnamed spool file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import IO, Any

from ..audio.decoder import SAMPLE_BYTES, SAMPLE_RATE


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
CHUNK_ENCODINGS: dict[str, ChunkFormat] = {
    "webm": ChunkFormat(
        "webm", "libopus", "webm", "audio/webm", 32_000, (("compression_level", "3"),)
    ),
    "mp3": ChunkFormat("mp3", "libmp3lame", "mp3", "audio/mpeg", 64_000),
    "flac": ChunkFormat("flac", "flac", "flac", "audio/flac"),
    "wav": ChunkFormat("wav", "pcm_s16le", "wav", "audio/wav"),
}


class ChunkWriter:
    """One chunk: 16 kHz mono PCM encoded into ``file`` as it is written."""

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
        """Encode ``pcm`` into the chunk."""
        frame = self._av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // SAMPLE_BYTES)
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
        """Finish the chunk; its file, for the caller to own."""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._file
